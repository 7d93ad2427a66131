"""Decode any audio file to mono float32 at 16 kHz with soundfile + soxr (no FFmpeg, no torchcodec)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import soundfile as sf
import soxr

SAMPLING_RATE = 16_000
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".aiff", ".aif", ".au")


@runtime_checkable
class StoredAudio(Protocol):
    """Audio kept where it lies (a row of a memory-mapped Arrow table) until a worker reads it."""

    def read(self) -> str | bytes:
        """The file path or the encoded bytes."""
        ...


AudioInput = str | Path | bytes | StoredAudio


class AudioError(RuntimeError):
    """A clip that cannot be read: missing, corrupt or in a format libsndfile does not know."""


def _open(source: AudioInput) -> str | io.BytesIO:
    if isinstance(source, StoredAudio):
        source = source.read()
    if isinstance(source, bytes):
        return io.BytesIO(source)
    path = Path(source)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    return str(path)


def audio_duration(source: AudioInput) -> float:
    """Duration in seconds from the header alone (cheap: used to filter clips before training)."""
    try:
        info = sf.info(_open(source))
    except AudioError:
        raise
    except Exception as err:  # libsndfile raises several types for unreadable data
        raise AudioError(f"cannot read audio {_name(source)}: {err}") from err
    if info.samplerate <= 0 or info.frames <= 0:
        raise AudioError(f"audio {_name(source)} is empty")
    return info.frames / info.samplerate


def load_audio(source: AudioInput, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Read a clip, average its channels and resample it: a 1-D float32 array at ``sampling_rate``."""
    try:
        data, rate = sf.read(_open(source), dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as err:
        raise AudioError(f"cannot read audio {_name(source)}: {err}") from err
    if data.shape[0] == 0:
        raise AudioError(f"audio {_name(source)} is empty")
    return resample(data.mean(axis=1), rate, sampling_rate)


def resample(wave: np.ndarray, rate: int, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """soxr's high-quality resampler; a no-op when the rate already matches."""
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if rate == sampling_rate:
        return wave
    return soxr.resample(wave, rate, sampling_rate, quality="HQ").astype(np.float32, copy=False)


def _name(source: AudioInput) -> str:
    return "<bytes>" if isinstance(source, bytes) else str(source)  # StoredAudio: its __str__
