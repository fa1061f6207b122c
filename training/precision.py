"""The precision a run trains in when its config leaves ``trainer.precision`` unset (null): the fastest on this machine.

- CUDA with bf16 (Ampere or newer) -> ``bf16-mixed``; older CUDA GPUs -> ``16-mixed`` (with a GradScaler).
- A CPU without native bf16 (no AVX-512 BF16 / AMX) -> ``32-true``: bf16 autocast is emulated there, ~20x slower.
- A CPU with native bf16: it depends on the model (measured: a small ViT or DCGAN is 1.5-3x *slower* in bf16-mixed,
  a conv VAE or U-Net 1.5-3x faster), so a few training steps of the model are timed in both precisions
  (``probe_cpu_precision``) and the faster wins; fp32 unless bf16 is clearly (10%) faster. A resumed fit keeps the
  precision its checkpoint records (``PrecisionRecord``) instead of timing again: timings this close can fall either way.
"""

from __future__ import annotations

import copy
import time

import lightning as L
import torch

from compat import cpu_has_native_bf16
from training.rng import global_rng_states, set_global_rng_states

PROBE_MARGIN = 1.1  # bf16-mixed must be this much faster to be chosen over exact fp32
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


def resolve_precision(accelerator: str = "auto") -> tuple[str | None, str]:
    """The precision for this hardware and why; ``None`` when only timing the model can tell (native-bf16 CPUs)."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"CUDA GPU with bf16 ({name})"
        return "16-mixed", f"CUDA GPU without bf16 ({name})"
    if cpu_has_native_bf16():
        return None, "CPU with native bf16: the faster of 32-true and bf16-mixed for this model, timed"
    return "32-true", "CPU without native bf16, where bf16 autocast is emulated and much slower than fp32"


class PrecisionRecord(L.Callback):
    """Stores the precision the run trains in in every checkpoint (``checkpoint["precision"]``), so that resuming it
    with ``precision: null`` continues in that precision. The CLI adds this callback to every run."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[PRECISION_KEY] = trainer.precision


class _StepTimer(L.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.seconds.append(time.perf_counter() - self.start)


def train_step_seconds(model: L.LightningModule, datamodule: L.LightningDataModule, precision: str,
                       steps: int) -> list[float]:
    """Seconds of each of ``steps`` training steps of a copy of ``model`` on CPU, the first (warm-up, or compiling
    when the model has ``compile: true``) included.

    The copy leaves the model, its optimizer state and every random stream as they were.
    """
    timer = _StepTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, limit_train_batches=steps, max_epochs=1,
                        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer])
    states = global_rng_states()
    try:
        with _quiet():
            trainer.fit(copy.deepcopy(model), datamodule)
    finally:
        set_global_rng_states(states)
    return timer.seconds


def time_train_steps(model: L.LightningModule, datamodule: L.LightningDataModule, precision: str,
                     steps: int = 3) -> float:
    """Seconds per training step of a copy of ``model`` on CPU (the best of ``steps`` after a warm-up step)."""
    return min(train_step_seconds(model, datamodule, precision, steps + 1)[1:])


def probe_cpu_precision(model: L.LightningModule, datamodule: L.LightningDataModule) -> tuple[str, str]:
    """32-true or bf16-mixed, whichever trains ``model`` faster here, and the measured step times."""
    seconds = {p: time_train_steps(model, datamodule, p) for p in ("32-true", "bf16-mixed")}
    fp32, bf16 = seconds["32-true"], seconds["bf16-mixed"]
    precision = "bf16-mixed" if fp32 > PROBE_MARGIN * bf16 else "32-true"
    return precision, f"timed on this CPU: {fp32 * 1e3:.0f} ms/step in 32-true, {bf16 * 1e3:.0f} ms/step in bf16-mixed"


class _quiet:
    """Silences Lightning's per-Trainer info lines (GPU available, ...) while probing."""

    def __enter__(self) -> None:
        import logging

        self.loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.WARNING)

    def __exit__(self, *exc) -> None:
        for lg, level in zip(self.loggers, self.levels):
            lg.setLevel(level)
