"""Random streams: seeded ones for sampling, reproducible and distinct for every key (seed, rank, batch, ...), and
the process's global random state (torch, CUDA, numpy, Python), to save and restore, and ``RNGStateCheckpoint``, which
saves and restores them with every checkpoint, one per rank."""

from __future__ import annotations

import os
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from training.distributed import gather_objects


def seeded_generator(device: torch.device | str, *key: int) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from a tuple of ints, e.g. ``(seed, rank, batch_idx)``.

    Python hashes tuples of ints deterministically (``PYTHONHASHSEED`` affects only str/bytes), so the same key gives
    the same stream in every run and process, and different keys give different streams.
    """
    return torch.Generator(device=device).manual_seed(hash(key) % 2**63)


def global_rng_states() -> dict[str, Any]:
    """The global random states of torch, CUDA (one per device), numpy and Python, in the layout of Lightning's
    checkpoints (keys ``torch``, ``torch.cuda``, ``numpy``, ``python``)."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_global_rng_states(states: dict[str, Any]) -> None:
    """Restore what ``global_rng_states`` returned (CUDA's only when the states hold it)."""
    torch.set_rng_state(states["torch"])
    if states.get("torch.cuda"):
        torch.cuda.set_rng_state_all(states["torch.cuda"])
    np.random.set_state(states["numpy"])
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))


def _rng_states() -> dict[str, Any]:
    """Global RNG states in types ``torch.load(weights_only=True)`` accepts (numpy's key array as a list)."""
    states = global_rng_states()
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    states["numpy"] = (kind, keys.tolist(), pos, has_gauss, gauss)
    return states


def _set_rng(states: dict[str, Any]) -> None:
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    set_global_rng_states({**states, "numpy": (kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss)})


class RNGStateCheckpoint(Callback):
    """Per-rank random streams under DDP, and exact resumption of the global RNGs (torch, numpy, python, CUDA).

    ``seed_everything`` seeds every DDP rank alike, so each rank would draw the same GAN noise, diffusion timesteps
    and dropout masks; here rank r re-seeds with ``seed + r`` at setup (model weights are already built, and DDP
    broadcasts rank 0's). Checkpoints store every rank's RNG state; a resumed run restores them just before its first
    step, so with ``num_workers: 0`` and no random augmentation it retraces the uninterrupted run exactly.
    The CLI adds this callback to every run.
    """

    def __init__(self) -> None:
        super().__init__()
        self._to_restore: list[dict] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        seed = os.environ.get("PL_GLOBAL_SEED")
        if seed is not None and trainer.world_size > 1:
            L.seed_everything(int(seed) + trainer.global_rank, workers=True, verbose=False)

    def state_dict(self) -> dict[str, Any]:
        return {"rng_states": gather_objects([_rng_states()])}  # one entry per rank

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict.get("rng_states") if isinstance(state_dict, dict) else None
        if not isinstance(self._to_restore, list):
            self._to_restore = []  # says so at the first step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._to_restore is None:
            return
        states, self._to_restore = self._to_restore, None
        why = None
        if len(states) != trainer.world_size:
            why = (f"they were saved by {len(states)} process(es) and this run has {trainer.world_size}"
                   if states else "they are missing or unreadable")
        else:
            try:
                _set_rng(states[trainer.global_rank])
            except (KeyError, TypeError, ValueError, RuntimeError) as err:
                why = f"they are unreadable ({type(err).__name__}: {err})"
        if why:
            rank_zero_warn(f"the checkpoint's random states were not restored: {why}. Training continues with fresh "
                           f"random streams, so it will not retrace the run it resumes (its weights and data "
                           f"position are restored).")
