"""Where speech is: cut long audio at pauses, and find each piece's speech span for subtitle cue times.

A fine-tuned model decodes without timestamp tokens (it was trained with ``<|notimestamps|>``; forcing timestamp
mode on it degrades the text), so cue times come from the audio instead, on a grid of 20 ms frames. Two detectors:
``vad`` (the default) asks silero-vad, a small voice-activity model shipped in its wheel, as faster-whisper's
``vad_filter`` does; ``energy`` calls a frame speech where it is within ``range_db`` of the loudest one (and above
the noise floor), which noise and music fool; ``none`` calls it all speech (every piece is decoded, as an
evaluation decodes every clip). Audio no longer than ``max_seconds`` is one segment, decoded whole, as
evaluation decodes a clip; longer audio is cut at the longest pause in the second half of each ``max_seconds``
stretch (at the quietest moment where there is no pause). A segment without speech is not decoded (transcribe).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

FRAME_SECONDS = 0.02
Detector = Literal["vad", "energy", "none"]
DETECTORS: tuple[str, ...] = ("vad", "energy", "none")


@dataclass(frozen=True)
class Segment:
    """Samples ``[start, end)`` to decode, and the seconds where speech begins and ends inside them."""

    start: int
    end: int
    speech_start: float
    speech_end: float

    @property
    def has_speech(self) -> bool:
        return self.speech_end > self.speech_start


def frame_levels(wave: np.ndarray, rate: int) -> np.ndarray:
    """RMS level of each 20 ms frame, in dB (silence floors at -100)."""
    size = max(1, int(rate * FRAME_SECONDS))
    frames = len(wave) // size
    if frames == 0:
        return np.full(1, -100.0)
    power = np.square(wave[: frames * size].astype(np.float64)).reshape(frames, size).mean(axis=1)
    return 10 * np.log10(np.maximum(power, 1e-10))


def speech_mask(levels: np.ndarray, range_db: float = 40.0, floor_margin_db: float = 6.0) -> np.ndarray:
    """Frames that hold speech: within ``range_db`` of the loudest frame and ``floor_margin_db`` above the
    quietest tenth (the noise floor)."""
    threshold = max(levels.max() - range_db, np.quantile(levels, 0.1) + floor_margin_db)
    return levels > threshold


@functools.cache
def _silero() -> tuple[torch.nn.Module, Callable]:
    """silero-vad's model and its ``get_speech_timestamps``. Importing silero_vad calls ``torch.set_num_threads(1)``
    for the whole process (its model.py), which halved the decoding speed of ``transcribe`` and the page on 2 cores:
    the thread count is put back."""
    threads = torch.get_num_threads()
    try:
        from silero_vad import get_speech_timestamps, load_silero_vad

        return load_silero_vad(), get_speech_timestamps
    finally:
        torch.set_num_threads(threads)


def vad_mask(wave: np.ndarray, rate: int, frames: int, threshold: float = 0.5) -> np.ndarray:
    """Frames (20 ms) inside the speech silero-vad finds (16 kHz, or 8 kHz, as it was trained)."""
    if rate not in (8_000, 16_000):
        raise ValueError(f"silero-vad takes 8 or 16 kHz audio, not {rate} Hz")
    mask = np.zeros(frames, dtype=bool)
    if len(wave) < 512:  # shorter than one of its windows: nothing it can judge
        return mask
    model, get_speech_timestamps = _silero()
    with torch.inference_mode():
        spans = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(wave, np.float32)), model, threshold, rate)
    for span in spans:
        mask[int(span["start"] / rate / FRAME_SECONDS) : -(-span["end"] // int(rate * FRAME_SECONDS))] = True
    return mask


def speech_frames(wave: np.ndarray, rate: int, detector: Detector = "vad") -> tuple[np.ndarray, np.ndarray]:
    """Each 20 ms frame's level (dB) and whether it holds speech, by ``detector``."""
    levels = frame_levels(wave, rate)
    if detector == "vad":
        speech = vad_mask(wave, rate, len(levels))
    elif detector == "energy":
        speech = speech_mask(levels)
    elif detector == "none":  # all of it is speech: every piece decoded, long audio cut at its quietest moments
        speech = np.ones(len(levels), dtype=bool)
    else:
        raise ValueError(f"detector must be one of {DETECTORS}, not {detector!r}")
    return levels, speech


def split(
    wave: np.ndarray, rate: int, max_seconds: float = 30.0, min_pause: float = 0.3, detector: Detector = "vad"
) -> list[Segment]:
    """Segments of at most ``max_seconds`` covering the whole wave, cut inside pauses."""
    levels, speech = speech_frames(wave, rate, detector)
    return _split(wave, rate, levels, speech, max_seconds, min_pause)


def _split(
    wave: np.ndarray, rate: int, levels: np.ndarray, speech: np.ndarray, max_seconds: float, min_pause: float
) -> list[Segment]:
    size = max(1, int(rate * FRAME_SECONDS))
    longest = max(1, int(max_seconds / FRAME_SECONDS))
    cuts, start = [0], 0
    total = len(levels)
    while len(wave) - start * size > max_seconds * rate:
        lo, hi = start + longest // 2, min(start + longest, total)
        cut = _longest_pause(speech[lo:hi], int(min_pause / FRAME_SECONDS))
        if cut is None:  # no pause: the quietest 200 ms
            smooth = np.convolve(levels[lo:hi], np.ones(10) / 10, mode="same")
            cut = int(np.argmin(smooth))
        start = lo + cut
        cuts.append(start)
    bounds = [c * size for c in cuts] + [len(wave)]
    return [_segment(speech, a, b, rate, size) for a, b in itertools.pairwise(bounds)]


def _segment(speech: np.ndarray, a: int, b: int, rate: int, size: int) -> Segment:
    """Samples ``[a, b)`` with the span of the speech frames inside them."""
    inside = np.flatnonzero(speech[a // size : -(-b // size)])
    first, last = (inside[0], inside[-1] + 1) if len(inside) else (0, 0)
    offset = a / rate
    return Segment(a, b, float(offset + first * FRAME_SECONDS), float(min(b / rate, offset + last * FRAME_SECONDS)))


def at_pauses(
    wave: np.ndarray,
    rate: int,
    piece_seconds: float,
    max_seconds: float = 30.0,
    min_pause: float = 0.3,
    detector: Detector = "vad",
    margin: float = 0.5,
    whole_seconds: float = 0.0,
) -> list[Segment]:
    """Pieces like the clips a model was trained on: the speech between pauses of at least ``min_pause``, joined to
    the next only while the piece's speech stays within ``piece_seconds`` (so a model trained on one sentence per
    clip is given one sentence, not 30 s of them), each with up to ``margin`` seconds of the pause on either side.
    Speech without a pause for longer than ``max_seconds`` is cut as :func:`split` cuts it. Stretches without speech
    are left out; audio without any is one segment without speech (``has_speech`` False). Audio no longer than
    ``whole_seconds`` (the longest clip the run trained on) is one piece, decoded whole as an evaluation clip is."""
    levels, speech = speech_frames(wave, rate, detector)
    if len(wave) <= whole_seconds * rate:
        return _split(wave, rate, levels, speech, max_seconds, min_pause)
    size = max(1, int(rate * FRAME_SECONDS))
    runs = _runs(speech, int(min_pause / FRAME_SECONDS))
    if not runs:
        return [Segment(0, len(wave), 0.0, 0.0)]
    pieces: list[list[tuple[int, int]]] = [[runs[0]]]
    for run in runs[1:]:
        if (run[1] - pieces[-1][0][0]) * FRAME_SECONDS <= piece_seconds:
            pieces[-1].append(run)
        else:
            pieces.append([run])
    pad = int(margin / FRAME_SECONDS)
    segments: list[Segment] = []
    for n, piece in enumerate(pieces):
        first, last = piece[0][0], piece[-1][1]
        left = first - min(pad, (first - pieces[n - 1][-1][1]) // 2) if n else max(0, first - pad)
        right = last + min(pad, (pieces[n + 1][0][0] - last) // 2) if n + 1 < len(pieces) else last + pad
        a, b = left * size, min(len(wave), right * size)
        if b - a <= max_seconds * rate:
            segments.append(_segment(speech, a, b, rate, size))
            continue
        for inner in _split(wave[a:b], rate, levels[left:right], speech[left:right], max_seconds, min_pause):
            segments.append(
                Segment(a + inner.start, a + inner.end, inner.speech_start + a / rate, inner.speech_end + a / rate)
            )
    return segments


def _runs(speech: np.ndarray, shortest_pause: int) -> list[tuple[int, int]]:
    """Frames ``[start, end)`` of speech, runs closer than ``shortest_pause`` frames joined."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], speech.astype(np.int8), [0]])))
    runs: list[tuple[int, int]] = []
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        if runs and start - runs[-1][1] < shortest_pause:
            runs[-1] = (runs[-1][0], int(end))
        else:
            runs.append((int(start), int(end)))
    return runs


def _longest_pause(speech: np.ndarray, shortest: int) -> int | None:
    """Middle frame of the longest run of non-speech frames of at least ``shortest`` frames, or None."""
    best, best_length, run_start = None, shortest - 1, None
    for i, is_speech in enumerate(np.append(speech, True)):
        if not is_speech and run_start is None:
            run_start = i
        elif is_speech and run_start is not None:
            if i - run_start > best_length:
                best, best_length = (run_start + i) // 2, i - run_start
            run_start = None
    return best
