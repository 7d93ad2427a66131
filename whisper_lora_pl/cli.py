"""LightningCLI: ``python train.py fit|validate|test --config configs/....yaml``."""

from __future__ import annotations

import warnings

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from whisper_lora_pl.data import WhisperDataModule
from whisper_lora_pl.module import WhisperLoRA


class WhisperCLI(LightningCLI):
    """Model name, language and task are written once, under ``model:``, and linked into the data module."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key in ("model_name", "language", "task"):
            parser.link_arguments(f"model.{key}", f"data.{key}")


def main(args: list[str] | None = None, run: bool = True) -> WhisperCLI:
    """Entry point of ``train.py``; ``args`` lets tests drive the real CLI in-process."""
    # bitsandbytes warns on every int8 matmul that fp32 inputs are cast to fp16: expected, and it floods the log
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    return WhisperCLI(
        WhisperLoRA,
        WhisperDataModule,
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
