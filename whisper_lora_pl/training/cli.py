"""LightningCLI: ``python train.py fit|validate|test --config configs/....yaml``."""

from __future__ import annotations

import os
import sys
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from whisper_lora_pl.console import quiet_libraries
from whisper_lora_pl.data.datamodule import WhisperDataModule
from whisper_lora_pl.training.checkpoints import AtomicCheckpointIO
from whisper_lora_pl.training.curves import TrainingCurves
from whisper_lora_pl.training.memory import MemoryCheck
from whisper_lora_pl.training.module import WhisperLoRA

#: what a process stopped by SIGTERM conventionally exits with (128 + 15), so schedulers see a preemption
SIGTERM_EXIT = 143


class WhisperCLI(LightningCLI):
    """Model name, language, task and encoder context are written once, under ``model:``, and linked into the
    data module."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key in ("model_name", "language", "task", "context_seconds"):
            parser.link_arguments(f"model.{key}", f"data.{key}")
        parser.add_lightning_class_args(TrainingCurves, "curves")  # always on: curves.png at the end of fit
        parser.add_lightning_class_args(MemoryCheck, "memory_check")  # the worst batches before step 1

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Unless the config says otherwise: TensorBoard and CSV logs in one version folder, and checkpoints
        written atomically (added here, not as a config default: jsonargparse cannot write an instance back)."""
        trainer = self._get(self.config_init, "trainer", default={})
        if trainer.get("logger") in (None, True) and "logger" not in kwargs:
            kwargs["logger"] = default_loggers(trainer.get("default_root_dir") or os.getcwd())
        plugins = trainer.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            kwargs.setdefault("plugins", [*plugins, AtomicCheckpointIO()])
        return super().instantiate_trainer(**kwargs)


def default_loggers(root: str) -> list[Logger]:
    """``metrics.csv`` and TensorBoard events (``tensorboard --logdir <root>``) in ``<root>/lightning_logs/version_N``
    (CSV first: it wants to create the folder)."""
    csv = CSVLogger(root, name="lightning_logs")
    return [csv, TensorBoardLogger(root, name="lightning_logs", version=csv.version)]


def main(args: list[str] | None = None, run: bool = True) -> WhisperCLI:
    """Entry point of ``train.py``; ``args`` lets tests drive the real CLI in-process.

    On SIGTERM (preemption) Lightning stops at the next step boundary and a ``ModelCheckpoint`` with
    ``save_on_exception: true`` writes the checkpoint; here that ends as a clean exit, not a traceback.
    """
    quiet_libraries()
    try:
        return WhisperCLI(
            WhisperLoRA,
            WhisperDataModule,
            seed_everything_default=42,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )
    except SIGTERMException:
        rank_zero_info("stopped by SIGTERM; the checkpoint is saved: resume with --ckpt_path last")
        sys.exit(SIGTERM_EXIT)
