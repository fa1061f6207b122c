"""Random streams: seeded ones for sampling, reproducible and distinct for every key (seed, rank, batch, ...), and
the process's global random state (torch, CUDA, numpy, Python), to save and restore."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


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
