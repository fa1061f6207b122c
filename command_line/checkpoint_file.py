"""A checkpoint file as ``--ckpt_path`` gives it: read without running pickled code, and refused in one paragraph
when it is not a usable Lightning checkpoint (empty, truncated, not a checkpoint, NaN/inf weights or optimizer state,
a URL).

- ``read_checkpoint``: weights-only, a Lightning checkpoint, finite weights; anything else is one ``CheckpointError``.
- ``batches_into_epoch``: how far into its epoch the checkpoint's training loader was.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used with this run's config."""


def first_line(err: BaseException) -> str:
    """``Type: first line of the message`` (just the type when the message is empty), without terminal colours."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def read_checkpoint(path: str) -> dict:
    """A checkpoint (weights, model hyperparameters, run record), loaded without running pickled code
    (``weights_only``), whose weights are all finite.

    Anything but a readable Lightning checkpoint (an empty or truncated file, a bare tensor, a list, a dict without a
    ``state_dict``, NaN/inf weights) is one ``CheckpointError`` saying what the file holds.
    """
    use_another = "Use another checkpoint of the run (last.ckpt or the best one beside it)."
    if Path(path).stat().st_size == 0:
        raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes): its write never finished. {use_another}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"cannot read checkpoint '{path}': the file is truncated, corrupted or not a PyTorch checkpoint "
            f"({first_line(err)}). {use_another} Checkpoints written by module14 load with weights_only=True; a "
            f"file that needs pickled code is refused on purpose."
        ) from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        holds = "a dict without a 'state_dict'" if isinstance(checkpoint, dict) else f"a {type(checkpoint).__name__}"
        raise CheckpointError(
            f"'{path}' holds {holds}, not a Lightning checkpoint (a dict with a 'state_dict' of weights). {use_another}"
        )
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        if not isinstance(checkpoint.get(key, {}), dict):
            raise CheckpointError(f"'{path}' has {key} of type {type(checkpoint[key]).__name__}, not a dict. {use_another}")
    non_finite = [name for name, value in checkpoint["state_dict"].items()
                  if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]
    if non_finite:
        more = f" and {len(non_finite) - 3} more" if len(non_finite) > 3 else ""
        raise CheckpointError(
            f"checkpoint '{path}' holds NaN or infinite weights ({', '.join(non_finite[:3])}{more}): it was saved "
            f"after training diverged, and every result computed with it would be NaN. {use_another}"
        )
    if _non_finite(checkpoint.get("optimizer_states")):
        raise CheckpointError(
            f"checkpoint '{path}' holds NaN or infinite optimizer state (Adam's moments): resuming from it would turn "
            f"the weights NaN at the first step. {use_another}"
        )
    return checkpoint


def batches_into_epoch(checkpoint: dict) -> int:
    """How many training batches of its epoch a checkpoint's data loader had given (0 at an epoch boundary)."""
    loaders = (((checkpoint.get("loops") or {}).get("fit_loop") or {}).get("state_dict") or {}).get("combined_loader")
    loader = loaders[0] if isinstance(loaders, list) and loaders and isinstance(loaders[0], dict) else {}
    yielded = loader.get("_num_yielded", 0)
    return yielded if isinstance(yielded, int) and not loader.get("_iterator_finished") else 0


def _non_finite(value: Any) -> bool:
    """Whether a nested structure of tensors holds a NaN or infinite float."""
    if isinstance(value, torch.Tensor):
        return value.is_floating_point() and not torch.isfinite(value).all().item()
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    return False


def refuse_remote(ckpt_path: str) -> None:
    """A checkpoint given as a URL (``http://``, ``s3://``, any ``://``) is refused before anything loads it."""
    if "://" in ckpt_path:
        raise CheckpointError(
            f"--ckpt_path '{ckpt_path}' is a URL; module14 loads checkpoints only from local file paths (a file "
            f"fetched from elsewhere can carry code that loading it would run). Download it yourself, check where it comes "
            f"from, then pass the local path: --ckpt_path path/to/file.ckpt"
        )
