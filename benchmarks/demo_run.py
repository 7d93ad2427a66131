"""What the demo sweeps share (``context_sweep.py``, ``robustness.py``): ``configs/demo.yaml`` as one measured run
in a child process takes it, and a clock of its training steps and evaluation pass. Imported by the children only
(it loads Lightning)."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L

REPO = Path(__file__).resolve().parent.parent


def demo_args(folder: str | Path, seed: int, *extra: str) -> list[str]:
    """train.py arguments of the demo without checkpoints, progress bar or the evaluation before training."""
    return [
        "--config",
        str(REPO / "configs" / "demo.yaml"),
        f"--data.source.init_args.root={REPO / 'data' / 'demo-zh-CN'}",
        f"--trainer.default_root_dir={folder}",
        "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        f"--seed_everything={seed}",
        *extra,
    ]


class Clock(L.Callback):
    """Seconds spent in training steps (summed) and in the last validation pass."""

    def __init__(self) -> None:
        self.train = self.evaluation = 0.0

    def on_train_batch_start(self, *args) -> None:
        self._step = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.train += time.perf_counter() - self._step

    def on_validation_epoch_start(self, *args) -> None:
        self._eval = time.perf_counter()

    def on_validation_epoch_end(self, *args) -> None:
        self.evaluation = time.perf_counter() - self._eval
