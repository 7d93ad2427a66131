"""LightningCLI: ``python train.py fit|validate|test --config configs/....yaml``."""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from whisper_lora_pl.checkpoints import AtomicCheckpointIO
from whisper_lora_pl.data import WhisperDataModule
from whisper_lora_pl.module import WhisperLoRA

#: what a process stopped by SIGTERM conventionally exits with (128 + 15), so schedulers see a preemption
SIGTERM_EXIT = 143


class WhisperCLI(LightningCLI):
    """Model name, language and task are written once, under ``model:``, and linked into the data module."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key in ("model_name", "language", "task"):
            parser.link_arguments(f"model.{key}", f"data.{key}")


def main(args: list[str] | None = None, run: bool = True) -> WhisperCLI:
    """Entry point of ``train.py``; ``args`` lets tests drive the real CLI in-process.

    On SIGTERM (preemption) Lightning stops at the next step boundary and a ``ModelCheckpoint`` with
    ``save_on_exception: true`` writes the checkpoint; here that ends as a clean exit, not a traceback.
    """
    try:
        return WhisperCLI(
            WhisperLoRA,
            WhisperDataModule,
            seed_everything_default=42,
            trainer_defaults={"plugins": [AtomicCheckpointIO()]},
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )
    except SIGTERMException:
        rank_zero_info("stopped by SIGTERM; the checkpoint is saved: resume with --ckpt_path last")
        sys.exit(SIGTERM_EXIT)
