"""LoRA fine-tuning of Whisper on a quantized base, with PyTorch Lightning.

The names below load on first use, so that importing one light module (a DataLoader worker importing
``whisper_lora_pl.dataset``) does not import Lightning and the model code too.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from whisper_lora_pl.audio import AudioError, load_audio
    from whisper_lora_pl.collate import SpeechCollator, UnrepeatedDistributedSampler
    from whisper_lora_pl.data import WhisperDataModule
    from whisper_lora_pl.model import LoraSettings, build_whisper_lora
    from whisper_lora_pl.module import WhisperLoRA
    from whisper_lora_pl.sources import CommonVoiceFolder, DataCollective, HubDataset, Manifest, Source
    from whisper_lora_pl.text import ErrorRates, TextNormalizer

_HOMES = {
    "AudioError": "audio",
    "load_audio": "audio",
    "SpeechCollator": "collate",
    "UnrepeatedDistributedSampler": "collate",
    "WhisperDataModule": "data",
    "LoraSettings": "model",
    "build_whisper_lora": "model",
    "WhisperLoRA": "module",
    "CommonVoiceFolder": "sources",
    "DataCollective": "sources",
    "HubDataset": "sources",
    "Manifest": "sources",
    "Source": "sources",
    "ErrorRates": "text",
    "TextNormalizer": "text",
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
