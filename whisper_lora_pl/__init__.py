"""LoRA fine-tuning of Whisper on a quantized base, with PyTorch Lightning.

The names below load on first use, so that importing one light module (a DataLoader worker importing
``whisper_lora_pl.data.dataset``) does not import Lightning and the model code too.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from whisper_lora_pl.data.audio import AudioError, load_audio
    from whisper_lora_pl.data.collate import SpeechCollator, UnrepeatedDistributedSampler
    from whisper_lora_pl.data.datamodule import WhisperDataModule
    from whisper_lora_pl.data.sources import CommonVoiceFolder, DataCollective, HubDataset, Manifest, Source
    from whisper_lora_pl.decoding.text import ErrorRates, TextNormalizer
    from whisper_lora_pl.model.build import build_whisper_lora
    from whisper_lora_pl.model.settings import LoraSettings
    from whisper_lora_pl.training.module import WhisperLoRA

_HOMES = {
    "AudioError": "data.audio",
    "load_audio": "data.audio",
    "SpeechCollator": "data.collate",
    "UnrepeatedDistributedSampler": "data.collate",
    "WhisperDataModule": "data.datamodule",
    "LoraSettings": "model.settings",
    "build_whisper_lora": "model.build",
    "WhisperLoRA": "training.module",
    "CommonVoiceFolder": "data.sources",
    "DataCollective": "data.sources",
    "HubDataset": "data.sources",
    "Manifest": "data.sources",
    "Source": "data.sources",
    "ErrorRates": "decoding.text",
    "TextNormalizer": "decoding.text",
}

__all__ = [
    "AudioError",
    "CommonVoiceFolder",
    "DataCollective",
    "ErrorRates",
    "HubDataset",
    "LoraSettings",
    "Manifest",
    "Source",
    "SpeechCollator",
    "TextNormalizer",
    "UnrepeatedDistributedSampler",
    "WhisperDataModule",
    "WhisperLoRA",
    "build_whisper_lora",
    "load_audio",
]


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
