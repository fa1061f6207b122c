"""What every rank of a run must agree on, in one call each (a no-op in one process)."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def gather_objects(rows: list[Any]) -> list[Any]:
    """All ranks' rows on every rank, concatenated in rank order (``rows`` itself in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return rows
    gathered: list[list[Any]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, rows)
    return [row for part in gathered for row in part]
