"""The one collective this package needs besides Lightning's: gathering Python objects from every rank."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank; ``[obj]`` when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, obj)
    return everyone
