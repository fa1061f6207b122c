"""The precision a run trains in when its config leaves ``trainer.precision`` unset (null): a rule, not a stopwatch.
The same command on the same machine always trains in the same precision, printed with its reason and recorded in
``config.yaml`` and every checkpoint.

- CUDA with bf16 (Ampere or newer) -> ``bf16-mixed``; older CUDA GPUs -> ``16-mixed`` (with a GradScaler).
- A CPU without native bf16 (no AVX-512 BF16 / AMX) -> ``32-true``: bf16 autocast is emulated there, ~20x slower.
- A CPU with native bf16 -> what the model family trains faster in there, which the family states
  (``precision_on_bf16_cpu``, measured by ``benchmarks/precision.py`` for every config and kept only when
  ``bf16-mixed`` is clearly, ``MARGIN``, faster); a model that states nothing trains in exact ``32-true``.
  Measured on a 2-core AMD EPYC with AVX-512 BF16 (2026-12-07, ms per train step, fp32 / bf16-mixed): vit_mnist
  60 / 42 and vit_cifar10 1496 / 802 since attention in bf16 takes the faster kernel (``networks/attention.py``;
  before it, 55 / 108 and 1296 / 1229, and the ViT trained in 32-true); VAEs 1.17-1.51x, GANs 1.38-1.70x and the
  ddpm_mnist U-Net faster in bf16-mixed: every family trains in bf16-mixed there.
"""

from __future__ import annotations

import lightning as L
import torch

from compat import cpu_has_native_bf16

MARGIN = 1.1  # bf16-mixed must be this much faster than exact fp32 for a family to state it
PRECISION_KEY = "precision"  # the checkpoint entry PrecisionRecord writes
# What module14 trains and is tested in (with Lightning's short aliases); null lets resolve_precision choose.
SUPPORTED = {"32-true": "32-true", "32": "32-true", "bf16-mixed": "bf16-mixed", "bf16": "bf16-mixed",
             "16-mixed": "16-mixed (CUDA GPUs)", "16": "16-mixed"}


def check_precision(precision: str | int | None) -> None:
    """A ``trainer.precision`` module14 does not support (``64-true``: the data and samplers are float32; the
    ``*-true`` half precisions) is a ValueError naming the supported ones, before anything is built."""
    if precision is not None and str(precision) not in SUPPORTED:
        choices = ", ".join(dict.fromkeys(SUPPORTED.values()))
        raise ValueError(
            f"trainer.precision={precision} is not supported by module14: use {choices}, or null (the fastest on "
            f"this machine)."
        )


def resolve_precision(accelerator: str, model: object = None) -> tuple[str, str]:
    """The precision for this hardware and ``model``, and why."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"CUDA GPU with bf16 ({name})"
        return "16-mixed", f"CUDA GPU without bf16 ({name})"
    if not cpu_has_native_bf16():
        return "32-true", "CPU without native bf16, where bf16 autocast is emulated and much slower than fp32"
    family = type(model).__name__
    precision = getattr(model, "precision_on_bf16_cpu", "32-true")
    if precision not in ("32-true", "bf16-mixed"):
        raise ValueError(f"{family}.precision_on_bf16_cpu={precision!r}: state '32-true' or 'bf16-mixed'.")
    return precision, f"CPU with native bf16, where {family} trains faster in {precision} (benchmarks/precision.py)"


class PrecisionRecord(L.Callback):
    """Stores the precision the run trains in in every checkpoint (``checkpoint["precision"]``), so that resuming it
    on a machine where the rule gives another precision says so. The CLI adds this callback to every run."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[PRECISION_KEY] = trainer.precision
