"""Data: what goes into the model. Audio decoding, corpus sources, features, batching, augmentation, evaluation
sets, where speech is, and the LightningDataModule. Imports nothing from the other parts.

``WhisperDataModule`` loads on first use, so that a DataLoader worker importing ``whisper_lora_pl.data.dataset``
does not import Lightning too.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from whisper_lora_pl.data.datamodule import WhisperDataModule

__all__ = ["WhisperDataModule"]


def __getattr__(name: str) -> object:
    if name != "WhisperDataModule":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return importlib.import_module(f"{__name__}.datamodule").WhisperDataModule
