"""Whisper's log-mel features, computed over the clip only: the frames of the 30 s padding are a known constant."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from transformers import WhisperFeatureExtractor

from whisper_lora_pl.data.audio import AudioError

#: with ``encoder_length: dynamic`` a batch keeps its longest clip's frames rounded up to this many (1 s): a few
#: lengths only (kernels and allocations are reused), and every clip keeps some of the padding it was trained with
FRAME_STEP = 100
#: mel frames per second of audio (16 kHz, hop 160)
FRAMES_PER_SECOND = 100
#: seconds between two of Whisper's timestamp tokens (one encoder position: two mel frames)
TIME_STEP = 0.02

#: log10 of the floor Whisper clamps mel energies to (1e-10): what an all-zero frame gives before scaling
_SILENT_LOG = -10.0


def log_mel(extractor: WhisperFeatureExtractor, wave: np.ndarray) -> np.ndarray:
    """``extractor(wave).input_features[0]`` at a fraction of the work, equal to float32 rounding (bit for bit on
    the demo clips; the mel matmul may round differently in the last place for another frame count).

    The extractor pads every clip to 30 s and runs the STFT over all of it; a 3.5 s clip is 88% zeros (measured:
    13.8 ms per demo clip the library's way, 1.2 ms here). A frame that sees only zeros has log energy -10, which
    Whisper clamps to ``max - 8`` and scales by ``(x + 4) / 4``: in the output it is ``max(peak - 2, -1.5)``, where
    ``peak`` is the largest output value. ``n_fft`` zeros after the clip give the frames across its end the same
    samples the 30 s padding gives them. Falls back to the library for dither (random) and clips near 30 s.

    Finite samples can still overflow the STFT's power (a float file with samples of 1e25): features that are not
    finite raise :class:`AudioError`, so no NaN reaches the model (about 33 us a 4 s clip to check).
    """
    features = _log_mel(extractor, wave)
    if not np.isfinite(features).all():
        peak = float(np.abs(wave).max()) if wave.size else 0.0
        raise AudioError(
            f"its log-mel features are not finite (samples reach {peak:.3g}: far outside [-1, 1])",
            "non-finite features",
        )
    return features


def _log_mel(extractor: WhisperFeatureExtractor, wave: np.ndarray) -> np.ndarray:
    tail = extractor.n_fft
    if getattr(extractor, "dither", 0.0) or len(wave) + tail > extractor.n_samples:
        return extractor(wave, sampling_rate=extractor.sampling_rate, return_tensors="np").input_features[0]
    padded = np.concatenate([wave.astype(np.float32, copy=False), np.zeros(tail, dtype=np.float32)])
    head = extractor(
        padded, sampling_rate=extractor.sampling_rate, padding="longest", return_tensors="np"
    ).input_features[0]
    silent = max(float(head.max()) - 2.0, (_SILENT_LOG + 4.0) / 4.0)
    features = np.full((extractor.feature_size, extractor.nb_max_frames), silent, dtype=np.float32)
    features[:, : head.shape[1]] = head
    return features


def set_feature_context(extractor: WhisperFeatureExtractor, seconds: float) -> WhisperFeatureExtractor:
    """Make ``extractor`` pad and cut to ``seconds`` (what ``chunk_length`` does at construction)."""
    extractor.chunk_length = seconds if seconds != int(seconds) else int(seconds)
    extractor.n_samples = int(seconds * extractor.sampling_rate)
    extractor.nb_max_frames = extractor.n_samples // extractor.hop_length
    return extractor


def trim_to_longest(
    features: torch.Tensor, durations: Sequence[float], step: int = FRAME_STEP, minimum_seconds: float = 0.0
) -> torch.Tensor:
    """A batch of full-window features cut after its longest clip (``durations`` in seconds), rounded up to
    ``step`` frames and to at least ``minimum_seconds``: what a variable-length encoder needs to see. The frames cut
    are padding only."""
    frames = math.floor(max(durations, default=0.0) * FRAMES_PER_SECOND) + 1  # the STFT's frames over the clip
    frames = max(frames, round(minimum_seconds * FRAMES_PER_SECOND))
    keep = min(features.shape[-1], math.ceil(frames / step) * step)
    return features[..., :keep]
