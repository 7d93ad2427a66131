"""Decode any audio file to mono float32 at 16 kHz with soundfile + soxr (no FFmpeg, no torchcodec), and reject
what would put a non-finite value into the model: audio is validated where it is decoded, in every path."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import soundfile as sf
import soxr

SAMPLING_RATE = 16_000
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".aiff", ".aif", ".au")

#: the first bytes of the containers libsndfile reads: a file that starts like one but does not open is cut short
_MAGIC = {
    b"RIFF": "WAV",
    b"RIFX": "WAV",
    b"fLaC": "FLAC",
    b"OggS": "Ogg",
    b"FORM": "AIFF",
    b".snd": "AU",
    b"ID3": "MP3",
}


@runtime_checkable
class StoredAudio(Protocol):
    """Audio kept where it lies (a row of a memory-mapped Arrow table) until a worker reads it."""

    def read(self) -> str | bytes:
        """The file path or the encoded bytes."""
        ...


@runtime_checkable
class DecodedAudio(Protocol):
    """Audio that another library decodes (a lhotse cut holding in-memory or Shar data): its length is known from
    its manifest, its samples come as (channels, samples) or (samples,) at ``rate``."""

    duration: float

    def samples(self) -> tuple[np.ndarray, int]:
        """The samples and their sampling rate."""
        ...


@dataclass(frozen=True)
class AudioSpan:
    """A stretch of a file (a lhotse cut of a longer recording, one supervision of it): only that stretch is read."""

    path: str
    offset: float
    duration: float

    def __str__(self) -> str:
        return f"{self.path} [{self.offset:g} s + {self.duration:g} s]"


AudioInput = str | Path | bytes | StoredAudio | AudioSpan | DecodedAudio


class AudioError(RuntimeError):
    """A clip that cannot be used. ``reason`` is the short kind of fault skips are counted by (``missing file``,
    ``empty file``, ``not audio``, ``truncated or corrupt``, ``non-finite samples``, ...); the message names the
    file too."""

    def __init__(self, message: str, reason: str = "unreadable audio") -> None:
        super().__init__(message)
        self.reason = reason


def _open(source: AudioInput) -> str | io.BytesIO:
    data = source.read() if isinstance(source, StoredAudio) else source
    if isinstance(data, bytes):
        if not data:
            raise AudioError(f"audio {_name(source)} is empty (0 bytes)", "empty file")
        return io.BytesIO(data)
    path = Path(data)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}", "missing file")
    if path.stat().st_size == 0:
        raise AudioError(f"audio file {path} is empty (0 bytes)", "empty file")
    return str(path)


def _unreadable(source: AudioInput, opened: str | io.BytesIO, err: Exception) -> AudioError:
    """Name the fault behind libsndfile's error (for a file it cannot sniff it says the file does not exist)."""
    if isinstance(opened, io.BytesIO):
        head = opened.getvalue()[:4]
    else:
        with open(opened, "rb") as handle:
            head = handle.read(4)
    kind = next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)
    if kind is None and len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        kind = "MP3"  # an MPEG frame sync without an ID3 tag
    if kind:
        # libsndfile says "File does not exist or is not a regular file" of a file it cannot sniff: not worth repeating
        detail = "" if "not a regular file" in str(err) else f" ({err})"
        return AudioError(f"{_name(source)} is a truncated or corrupt {kind} file{detail}", "truncated or corrupt")
    return AudioError(
        f"{_name(source)} is not audio that soundfile reads (WAV, FLAC, MP3, Ogg/Opus, AIFF, AU): "
        f"it starts with {head!r}",
        "not audio",
    )


def audio_duration(source: AudioInput) -> float:
    """Duration in seconds from the header alone (cheap: used to filter clips before training); a span's or
    decoded audio's from its manifest (a span is checked against its file's length)."""
    if isinstance(source, DecodedAudio):
        return float(source.duration)
    if isinstance(source, AudioSpan):
        whole = audio_duration(source.path)
        if source.offset < 0 or source.duration <= 0 or source.offset + source.duration > whole + 0.02:
            raise AudioError(f"{source} is not inside the file's {whole:.3f} s", "span outside the audio")
        return source.duration
    opened = _open(source)
    try:
        info = sf.info(opened)
    except Exception as err:  # libsndfile raises several types for unreadable data
        raise _unreadable(source, opened, err) from err
    if info.samplerate <= 0 or info.frames <= 0:
        raise AudioError(f"audio {_name(source)} holds no samples", "no samples")
    return info.frames / info.samplerate


def load_audio(source: AudioInput, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Read a clip, average its channels and resample it: a 1-D float32 array at ``sampling_rate``, every sample
    finite (about 10 us a 4 s clip to check), at least one left after resampling."""
    data, rate = _decode(source)
    if data.shape[0] == 0:
        raise AudioError(f"audio {_name(source)} holds no samples", "no samples")
    if not np.isfinite(data).all():
        bad = int(data.size - np.isfinite(data).sum())
        raise AudioError(f"audio {_name(source)} holds {bad} non-finite samples (NaN or Inf)", "non-finite samples")
    wave = resample(data.mean(axis=1), rate, sampling_rate)
    if wave.size == 0:
        raise AudioError(
            f"audio {_name(source)} is {data.shape[0]} samples at {rate} Hz: nothing is left at {sampling_rate} Hz",
            "no samples",
        )
    return wave


def _decode(source: AudioInput) -> tuple[np.ndarray, int]:
    """(samples, channels) float32 and the rate, from any input (a span reads only its stretch)."""
    if isinstance(source, DecodedAudio):
        try:
            data, rate = source.samples()
        except Exception as err:  # another library's decoder: any failure is this clip's
            raise AudioError(f"{source} cannot be decoded: {err}", "truncated or corrupt") from err
        data = np.asarray(data, dtype=np.float32)
        return (data[:, None] if data.ndim == 1 else data.T), int(rate)
    path = source.path if isinstance(source, AudioSpan) else source
    opened = _open(path)
    try:
        if isinstance(source, AudioSpan):
            rate = sf.info(opened).samplerate
            start, frames = round(source.offset * rate), round(source.duration * rate)
            data, rate = sf.read(opened, start=start, frames=frames, dtype="float32", always_2d=True)
        else:
            data, rate = sf.read(opened, dtype="float32", always_2d=True)
    except (RuntimeError, ValueError, TypeError, OSError, EOFError) as err:  # not MemoryError: that is no clip's fault
        raise _unreadable(path, opened, err) from err
    return data, rate


def resample(wave: np.ndarray, rate: int, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """soxr's high-quality resampler; a no-op when the rate already matches."""
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if rate == sampling_rate:
        return wave
    return soxr.resample(wave, rate, sampling_rate, quality="HQ").astype(np.float32, copy=False)


def _name(source: AudioInput) -> str:
    return "<bytes>" if isinstance(source, bytes) else str(source)  # StoredAudio: its __str__
