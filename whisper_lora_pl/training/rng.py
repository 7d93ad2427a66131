"""RNG states in checkpoints, so a resumed run draws the same dropout masks and shuffles as an unbroken one."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from whisper_lora_pl.training.dist import gather_objects


def run_seed() -> int:
    """The run's ``seed_everything`` (0 if none): draws made from it and the step or the clips are functions of the
    batch alone, the same on every rank and on resume, and need no state in the checkpoint."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def collect_rng_states() -> dict[str, Any]:
    """Tensors and plain Python values only: Lightning loads checkpoints with ``weights_only=True``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {
        "kind": kind,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }
    states = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's states, in rank order (only rank 0 writes the checkpoint, so it must carry them all)."""
    return gather_objects(collect_rng_states())
