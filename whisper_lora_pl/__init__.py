"""LoRA fine-tuning of Whisper on a quantized base, with PyTorch Lightning."""

from whisper_lora_pl.audio import AudioError, load_audio
from whisper_lora_pl.collate import SpeechCollator, UnrepeatedDistributedSampler
from whisper_lora_pl.data import WhisperDataModule
from whisper_lora_pl.model import LoraSettings, build_whisper_lora
from whisper_lora_pl.module import WhisperLoRA
from whisper_lora_pl.sources import CommonVoiceFolder, DataCollective, HubDataset, Manifest, Source
from whisper_lora_pl.text import ErrorRates, TextNormalizer

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
