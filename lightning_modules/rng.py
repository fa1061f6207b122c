"""Seeded random streams for sampling: reproducible, and distinct for every key (seed, rank, batch, ...)."""

from __future__ import annotations

import torch


def seeded_generator(device: torch.device | str, *key: int) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from a tuple of ints, e.g. ``(seed, rank, batch_idx)``.

    Python hashes tuples of ints deterministically (``PYTHONHASHSEED`` affects only str/bytes), so the same key gives
    the same stream in every run and process, and different keys give different streams.
    """
    return torch.Generator(device=device).manual_seed(hash(key) % 2**63)
