"""The weights shipped in ``weights/``: the MNIST rows' trained models (RESULTS.md's figures were measured with them)
and the MNIST FID ruler, each pinned by its sha256 in ``weights/SHA256SUMS`` (``sha256sum -c`` reads it too).

- ``verified(name)``: the path of a shipped file whose bytes match its pin; anything else is refused, saying how to
  restore it.
- ``pretrained_checkpoint(configs)``: what ``--ckpt_path pretrained`` means: ``weights/<config>.ckpt`` of the
  experiment config given with ``--config``.
- ``ship(checkpoint, name)``: writes a shipped file (weights only) and pins it; ``benchmarks/results.py`` calls it.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch

from training.checkpointing import atomic_file

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
SUMS = "SHA256SUMS"
# What a shipped checkpoint keeps of a training checkpoint: the weights and what describes them. Not the optimizer,
# loop and callback states (it is not for resuming), nor the run's W&B id or the data folder of the machine it
# was trained on.
KEPT = ("epoch", "global_step", "pytorch-lightning_version", "state_dict", "hparams_name", "hyper_parameters",
        "datamodule_hparams_name", "datamodule_hyper_parameters", "precision")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pins(folder: Path | None = None) -> dict[str, str]:
    """File name -> pinned sha256, from ``SHA256SUMS`` (coreutils' format: ``<hex>  <name>`` per line)."""
    sums = (folder or WEIGHTS) / SUMS
    if not sums.is_file():
        return {}
    return {name.lstrip("*"): digest for digest, name in (line.split(maxsplit=1) for line in
                                                          sums.read_text().splitlines() if line.strip())}


def verified(name: str, folder: Path | None = None) -> Path:
    """``weights/<name>``, after checking its bytes against the pinned sha256."""
    folder = folder or WEIGHTS
    path, pinned = folder / name, pins(folder).get(name)
    restore = f"Restore it with `git checkout weights/{name}` (a clone has it; `sha256sum -c SHA256SUMS` in weights/ " \
              f"checks every shipped file)."
    if not path.is_file():
        raise FileNotFoundError(f"the shipped weights {path} are missing. {restore}")
    if pinned is None:
        raise ValueError(f"{path} is not pinned in {folder / SUMS}: module14 ships only pinned weights. {restore}")
    digest = sha256(path)
    if digest != pinned:
        raise ValueError(
            f"{path} has sha256 {digest[:16]}..., not the pinned {pinned[:16]}...: these are not the weights "
            f"RESULTS.md's figures were measured with, and results computed with them would not be comparable. "
            f"{restore}")
    return path


def is_shipped(path: str | os.PathLike) -> bool:
    return Path(path).resolve().parent == WEIGHTS.resolve()


def shipped_configs() -> list[str]:
    """The experiment configs whose trained weights ship (``weights/<config>.ckpt``)."""
    return sorted(name.removesuffix(".ckpt") for name in pins() if name.endswith(".ckpt"))


def pretrained_checkpoint(configs: list[str]) -> str:
    """``--ckpt_path pretrained``: the shipped weights of the experiment config among ``configs`` (the ``--config``
    files; ``configs/dcgan_mnist.yaml`` -> ``weights/dcgan_mnist.ckpt``), verified."""
    names, shipped = [Path(config).stem for config in configs], shipped_configs()
    found = [name for name in names if name in shipped]
    if not found:
        raise ValueError(
            f"--ckpt_path pretrained loads the shipped weights of the experiment config, and none ship for "
            f"{', '.join(names) or 'a run without --config'}: weights ship for "
            f"{', '.join(f'configs/{name}.yaml' for name in shipped)}. Give one of them with --config, or "
            f"pass a checkpoint file.")
    return str(verified(f"{found[0]}.ckpt"))


def ship(checkpoint: dict, name: str, folder: Path | None = None) -> str:
    """Write ``checkpoint`` as ``weights/<name>`` (weights only, ``KEPT``; no data folder) and pin its sha256."""
    folder = folder or WEIGHTS
    kept = {key: checkpoint[key] for key in KEPT if key in checkpoint}
    if "datamodule_hyper_parameters" in kept:
        kept["datamodule_hyper_parameters"] = {**kept["datamodule_hyper_parameters"], "data_dir": None}
    folder.mkdir(exist_ok=True)
    path = folder / name
    buffer = io.BytesIO()  # not the file: torch.save names its archive after the file, the temporary one here
    torch.save(kept, buffer)
    with atomic_file(path) as temporary:
        temporary.write_bytes(buffer.getvalue())
    digest = sha256(path)
    sums = {**pins(folder), name: digest}
    with atomic_file(folder / SUMS) as temporary:
        temporary.write_text("".join(f"{sums[key]}  {key}\n" for key in sorted(sums)))
    return digest
