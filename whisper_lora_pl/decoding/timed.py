"""Long audio timed by the model itself (``transcribe --timestamps model``): window after window, as OpenAI's
``transcribe`` does, for a run that trained on timestamp labels (``data.timestamp_share``).

The windows are those transformers' long-form ``generate`` and faster-whisper decode, so that the model cards' calls
give ``transcribe``'s cues (tests/test_timed.py): the log-mel is computed once over the whole file (Whisper's level
normalisation sees the whole file), a window is the 30 s of frames from its start, and a window that runs past the
end of a long file is filled with log-mel frames of 0, as both runtimes fill it, at the full window even for a
dynamic encoder (``Decoder.whole_windows``); a file of one window is padded with silence, the log-mel of zeros, as
transformers' pipeline pads it. (OpenAI's ``transcribe`` and every training window pad with silence: on the weakly
trained demo model the 0 frames changed the text of most files' last window, and cost 0.05 of long-form CER;
docs/export-and-transcribe.md.) A window is decoded with timestamps (the evaluation's decoder: same
prompt, budget and loop guard, timestamps on); its closed segments become cues, and the next window starts where
OpenAI's rule says: at the end of the last closed segment when the output ends inside a segment (the window cut a
sentence, which is then decoded whole) or ends on a segment's end and the next one's start, else where this window
ended. The files under way are decoded together, a window of each per batch. A window without speech (``speech``
detector) is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from whisper_lora_pl.data.audio import SAMPLING_RATE, AudioError
from whisper_lora_pl.data.segments import Detector, split
from whisper_lora_pl.decoding.decode import TIME_STEP, Decoded, Decoder

#: finish(path, duration, chunks, error): a file is done, with its cues (or why it failed)
Finish = Callable[[Path, float, list[dict], str | None], None]


@dataclass
class _Cursor:
    path: Path
    wave: np.ndarray
    seek: int = 0  #: samples decoded so far
    chunks: list[dict] = field(default_factory=list)
    error: str | None = None
    features: np.ndarray | None = None  #: of the window under way
    mel: np.ndarray | None = None  #: of the whole file and what follows it (whole_log_mel)


def sequential(
    files: list[tuple[Path, np.ndarray]],
    decoder: Decoder,
    feature_extractor,
    finish: Finish,
    batch_size: int = 8,
    speech: Detector = "vad",
    progress: Callable[[int], None] = lambda windows: None,
) -> None:
    """Decode ``files`` (path, 16 kHz wave) window after window and call ``finish`` for each as it is done."""
    window = feature_extractor.n_samples
    first_timestamp = decoder.tokenizer.convert_tokens_to_ids("<|0.00|>")
    active = [_Cursor(path, wave) for path, wave in files]
    while active:
        todo = []
        for cursor in active:
            piece = cursor.wave[cursor.seek : cursor.seek + window]
            if (
                speech != "none"
                and not split(piece, SAMPLING_RATE, window / SAMPLING_RATE, detector=speech)[0].has_speech
            ):
                cursor.seek += len(piece)  # nothing to say here: Whisper would make something up
            else:
                todo.append((cursor, piece))
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            batch = [(cursor, piece) for cursor, piece in batch if _checked(cursor, piece, feature_extractor)]
            if not batch:
                continue
            features = torch.from_numpy(np.stack([cursor.features for cursor, _ in batch]))
            seconds = [len(piece) / SAMPLING_RATE for _, piece in batch]
            for (cursor, piece), outcome in zip(
                batch, decoder.isolating(features, seconds, "--batch-size"), strict=True
            ):
                if isinstance(outcome, Exception):
                    cursor.error, cursor.seek = f"{type(outcome).__name__}: {outcome}", len(cursor.wave)
                else:
                    _advance(cursor, piece, outcome, first_timestamp)
            progress(len(batch))
        for cursor in active:
            if cursor.seek >= len(cursor.wave):
                finish(cursor.path, len(cursor.wave) / SAMPLING_RATE, cursor.chunks, cursor.error)
        active = [cursor for cursor in active if cursor.seek < len(cursor.wave)]


def _checked(cursor: _Cursor, piece: np.ndarray, feature_extractor) -> bool:
    """Put the window's features on the cursor (the file's log-mel is computed at its first window); a file whose
    features are not finite fails."""
    frames = feature_extractor.nb_max_frames
    try:
        if cursor.mel is None:
            cursor.mel = whole_log_mel(feature_extractor, cursor.wave)
    except AudioError as err:
        cursor.error, cursor.seek = f"{cursor.path}: {err}", len(cursor.wave)
        return False
    start = cursor.seek // feature_extractor.hop_length
    cursor.features = cursor.mel[:, start : start + frames]
    return True


def whole_log_mel(feature_extractor, wave: np.ndarray) -> np.ndarray:
    """Whisper's log-mel of ``wave`` as transformers' pipeline computes it (Whisper's level normalisation sees
    the whole file), then what its long-form ``generate`` and faster-whisper put after a file's end: a window of
    frames of 0, so every window cut from it is whole. A file of one window (up to 30 s) is followed by silence
    instead, the log-mel of zeros, as the pipeline pads a short file (and OpenAI and every training window pad)."""
    wave = wave.astype(np.float32, copy=False)
    short = len(wave) <= feature_extractor.n_samples
    if short:
        wave = np.concatenate([wave, np.zeros(2 * feature_extractor.n_samples - len(wave), np.float32)])
    mel = feature_extractor(
        wave, sampling_rate=SAMPLING_RATE, truncation=False, padding="longest", return_tensors="np"
    ).input_features[0]
    if not np.isfinite(mel).all():
        raise AudioError("its log-mel features are not finite (samples far outside [-1, 1])", "non-finite features")
    if short:
        return mel
    frames = len(wave) // feature_extractor.hop_length
    return np.pad(mel[:, :frames], ((0, 0), (0, feature_extractor.nb_max_frames)))


def _advance(cursor: _Cursor, piece: np.ndarray, outcome: Decoded, first_timestamp: int) -> None:
    """File the window's cues and move the cursor past what the window settled (OpenAI's rule, which transformers
    and faster-whisper follow): when the output stops inside a segment, or on a segment's end and the next one's
    start, the rest is decoded again from the end of the last closed segment."""
    offset, length = cursor.seek / SAMPLING_RATE, len(piece) / SAMPLING_RATE
    segments = outcome.segments or ([(0.0, length, outcome.text.strip())] if outcome.text.strip() else [])
    closed = [s for s in segments if s[1] is not None]
    stamps = [(token - first_timestamp) * TIME_STEP for token in outcome.tokens[-2:] if token >= first_timestamp]
    resume = length
    if closed and segments[-1][1] is None:  # the window cut a sentence: decode it whole next time
        segments, resume = closed, closed[-1][1]
    elif len(stamps) == 2:  # a segment's end, then a start it did not write: from that end
        resume = stamps[0]
    for start, end, text in segments:
        end = length if end is None else min(end, length)
        cursor.chunks.append(
            {
                "start": round(offset + start, 3),
                "end": round(offset + max(end, start), 3),
                "text": text,
                "looped": outcome.looped,
                "temperature": outcome.temperature,
                "language": outcome.language,
            }
        )
    cursor.seek += round(resume * SAMPLING_RATE) if resume >= 1.0 else len(piece)  # always forward
