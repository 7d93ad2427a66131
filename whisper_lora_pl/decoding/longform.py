"""Long audio decoded as users' transcripts are: cut at pauses (or window after window with the model's timestamps),
each piece through the one decoding (``whisper_lora_pl.decoding.decode``), the pieces' texts joined and timed as cues.

``transcribe`` (the command), the web page and the evaluation's long-form sets (``data.eval_sets``, kind ``long``) all
call :func:`transcribe` here: the figures the evaluation reports are those of the cues users get.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from whisper_lora_pl.data.audio import SAMPLING_RATE, AudioError, load_audio
from whisper_lora_pl.data.features import log_mel
from whisper_lora_pl.data.segments import FRAME_SECONDS, Detector, Segment, at_pauses, speech_frames, split
from whisper_lora_pl.decoding.decode import Decoder, detect_languages
from whisper_lora_pl.decoding.text import CHINESE
from whisper_lora_pl.decoding.timed import sequential

log = logging.getLogger(__name__)


@dataclass
class Transcripts:
    """What a run produced: one record per transcribed file, and the files that failed with why."""

    records: list[dict] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class _Piece:
    file: int
    segment: Segment
    features: np.ndarray
    seconds: float


Sink = Callable[[dict], None]


def transcribe(
    files: list[Path],
    decoder: Decoder,
    feature_extractor,
    batch_size: int = 8,
    max_segment: float | None = None,
    group: int = 32,
    sink: Sink | None = None,
    speech: Detector = "vad",
    piece_seconds: float | None = None,
    whole_seconds: float = 0.0,
) -> Transcripts:
    """Decode every readable file, in pieces of at most ``max_segment`` seconds (by default the model's encoder
    context, which the feature extractor pads to). Pieces are decoded ``batch_size`` at a time, longest first
    within each group of ``group`` batches (similar lengths finish together; a group's features are about 1 MB a
    piece at 30 s).

    ``sink`` gets each file's record (or ``{"path", "error"}``) as soon as the file is finished, so a crash or a kill
    loses only the files of the group in flight. A batch that fails to decode is decoded again clip by clip: only
    the file whose piece fails gets an error record. ``result.records`` keep the order of ``files``. ``speech``
    names the detector of where speech is (``segments.split``); pieces without speech are not decoded.
    ``piece_seconds`` (the length of the clips the model trained on, ``RunInfo.piece_seconds``): cut at every pause
    once a piece's speech would pass it (``segments.at_pauses``), not only when it would pass ``max_segment``; a run
    trained on one sentence per clip then decodes one sentence at a time instead of writing one sentence for
    30 s of them; a file no longer than ``whole_seconds`` (the longest training clip) is decoded whole, as an
    evaluation clip. Decoding with the model's timestamps (``decoder.timestamps``) keeps whole windows, and so does
    audio in another language than the trained one when the decoder routes it to the base (``decoder.route``)."""
    context = feature_extractor.n_samples / feature_extractor.sampling_rate
    if max_segment is None:
        max_segment = context
    if not 0 < max_segment <= context:
        raise ValueError(f"max_segment must be in (0, {context:g}]: the model's encoder sees {context:g} s")
    if decoder.route is not None and decoder.language == "auto":  # each file to the model of its language
        return _by_language(files, decoder, feature_extractor, sink, speech, batch_size=batch_size,
                            max_segment=max_segment, group=group, piece_seconds=piece_seconds,
                            whole_seconds=whole_seconds)  # fmt: skip
    if decoder.route is not None and decoder.language not in (None, decoder.route[1]):
        # audio said to be in another language goes to the base whole, and the base decodes it as it decodes long
        # audio: window after window, timed by itself (pieces of the training clips' length are what the adapters
        # learned; given them, the base wrote 0.118 CER on the demo's English long files, in windows 0.042)
        decoder = replace(decoder, model=decoder.route[0], route=None, timestamps=True)
    result = Transcripts()
    files_out = _Files(decoder, result, sink or (lambda record: None))
    if decoder.timestamps:  # the model times its own segments, window after window
        # a window holds many sentences: bounded by its duration's budget alone, not by the run's max_new_tokens,
        # which was sized for evaluation clips (the demo's 40 cut a packed model's windows to a third); at the whole
        # window, as transformers and faster-whisper decode long audio (timed.py)
        decoder = replace(decoder, max_new_tokens=int(decoder.model.config.max_target_positions), whole_windows=True)
        for start in range(0, len(files), batch_size * group):
            _timed(files[start : start + batch_size * group], decoder, feature_extractor, batch_size, speech, files_out)
        result.records.sort(key=lambda record: files_out.order[record["path"]])
        return result
    pending: list[_Piece] = []
    with tqdm(desc="transcribing", unit="clip") as bar:
        for path in files:
            try:
                wave = load_audio(path)
                if piece_seconds:
                    segments = at_pauses(
                        wave, SAMPLING_RATE, piece_seconds, max_segment, detector=speech, whole_seconds=whole_seconds
                    )
                else:
                    segments = split(wave, SAMPLING_RATE, max_segment, detector=speech)
                pieces = [wave[segment.start : segment.end] for segment in segments]
                features = [log_mel(feature_extractor, piece) for piece in pieces]  # checks every piece's input
                # a stretch without speech is not decoded: Whisper makes up text for silence and noise
                kept = [i for i, segment in enumerate(segments) if segment.has_speech]
                segments, pieces, features = ([items[i] for i in kept] for items in (segments, pieces, features))
            except AudioError as err:
                log.warning("skipping %s: %s", path, err)
                files_out.fail(path, str(err) if str(path) in str(err) else f"{path}: {err}")
                continue
            file = files_out.add(path, len(wave) / SAMPLING_RATE, len(segments))
            for segment, piece, feature in zip(segments, pieces, features, strict=True):
                pending.append(_Piece(file, segment, feature, len(piece) / SAMPLING_RATE))
            if len(pending) >= batch_size * group:
                _decode(pending, decoder, batch_size, files_out, bar)
                pending = []
        _decode(pending, decoder, batch_size, files_out, bar)
    result.records.sort(key=lambda record: files_out.order[record["path"]])
    return result


def _by_language(files: list[Path], decoder: Decoder, feature_extractor, sink: Sink | None, speech: Detector,
                 **kwargs) -> Transcripts:  # fmt: skip
    """Long audio with its language left to the model, routed as a given language is: the base (or the adapters:
    ``detect_with``) detects each file's language once, on the 30 s from where its speech begins (as OpenAI's and
    faster-whisper's long-form decoding detect it on the first window), and the file is decoded in that language,
    by the adapters if it is the trained one, else whole by the base. Piece by piece, a file's pieces in another
    language were decoded by the base in pieces of the trained clips' length, and a piece the base misheard as the
    trained language went to the adapters."""
    trained = decoder.route[1]
    context = feature_extractor.n_samples
    result = Transcripts()
    groups: dict[str, list[Path]] = {}
    for path in tqdm(files, desc="detecting languages", unit="file"):
        try:
            wave = load_audio(path)
            frames = np.flatnonzero(speech_frames(wave, SAMPLING_RATE, speech)[1])
        except AudioError as err:
            log.warning("skipping %s: %s", path, err)
            result.failed[str(path)] = str(err) if str(path) in str(err) else f"{path}: {err}"
            if sink:
                sink({"path": str(path), "error": result.failed[str(path)]})
            continue
        if not len(frames):  # no speech: nothing to decode, in any language
            groups.setdefault(trained, []).append(path)
            continue
        start = int(frames[0] * FRAME_SECONDS * SAMPLING_RATE)
        features = torch.from_numpy(log_mel(feature_extractor, wave[start : start + context]))[None]
        groups.setdefault(detect_languages(decoder.detector(), decoder.tokenizer, features)[0], []).append(path)
    for language, group in groups.items():
        done = transcribe(group, replace(decoder, language=language), feature_extractor, sink=sink, speech=speech,
                          **kwargs)  # fmt: skip
        result.records += done.records
        result.failed |= done.failed
    order = {str(path): i for i, path in enumerate(files)}
    result.records.sort(key=lambda record: order[record["path"]])
    return result


def _timed(files: list[Path], decoder: Decoder, feature_extractor, batch_size: int, speech: Detector, out) -> None:
    """``timed.sequential`` over the readable ``files``, each filed as it finishes."""

    def finish(path: Path, duration: float, chunks: list[dict], error: str | None) -> None:
        file = out.add(path, duration, len(chunks) + (error is not None))
        for chunk in chunks:
            out.piece_done(file, chunk)
        if error is not None:
            out.piece_done(file, None, error)

    readable = []
    for path in files:
        try:
            readable.append((path, load_audio(path)))
        except AudioError as err:
            log.warning("skipping %s: %s", path, err)
            out.fail(path, str(err) if str(path) in str(err) else f"{path}: {err}")
    with tqdm(desc="transcribing", unit="window") as bar:
        sequential(readable, decoder, feature_extractor, finish, batch_size, speech, bar.update)


class _Files:
    """The files under way: their chunks as pieces are decoded, and their record once the last one is in."""

    def __init__(self, decoder: Decoder, result: Transcripts, sink: Sink) -> None:
        self.joiner = "" if (decoder.language or "") in CHINESE | {"ja"} else " "
        self.result, self.sink = result, sink
        self.paths: list[tuple[Path, float]] = []
        self.chunks: list[list[dict]] = []
        self.left: list[int] = []  # pieces not yet decoded, per file
        self.errors: dict[int, str] = {}
        self.order: dict[str, int] = {}

    def add(self, path: Path, duration: float, pieces: int) -> int:
        """A file of ``pieces`` pieces to decode; with none (no speech), its empty record is filed at once."""
        file = len(self.paths)
        self.order[str(path)] = file
        self.paths.append((path, duration))
        self.chunks.append([])
        self.left.append(pieces)
        if not pieces:
            self._finish(file)
        return file

    def fail(self, path: Path, error: str) -> None:
        self.result.failed[str(path)] = error
        self.sink({"path": str(path), "error": error})

    def piece_done(self, file: int, chunk: dict | None, error: str | None = None) -> None:
        if error is not None:
            self.errors.setdefault(file, error)
        else:
            self.chunks[file].append(chunk)
        self.left[file] -= 1
        if not self.left[file]:
            self._finish(file)

    def _finish(self, file: int) -> None:
        path, duration = self.paths[file]
        if file in self.errors:
            log.warning("%s failed: %s", path, self.errors[file])
            self.fail(path, f"{path}: decoding failed: {self.errors[file]}")
            return
        chunks = sorted(self.chunks[file], key=lambda c: c["start"])
        text = self.joiner.join(c["text"] for c in chunks if c["text"])
        looped = any(c["looped"] for c in chunks)
        record = {"path": str(path), "duration": round(duration, 3), "text": text, "looped": looped}
        record |= {"language": language_of(chunks), "chunks": chunks}
        self.result.records.append(record)
        self.sink(record)


def language_of(chunks: list[dict]) -> str | None:
    """A file's language: the one most of its speech was decoded in (by cue duration), None without cues."""
    seconds: dict[str, float] = {}
    for chunk in chunks:
        if chunk.get("language") and chunk["text"]:
            seconds[chunk["language"]] = seconds.get(chunk["language"], 0.0) + chunk["end"] - chunk["start"]
    return max(seconds, key=seconds.__getitem__) if seconds else None


def _decode(pieces: list[_Piece], decoder: Decoder, batch_size: int, files: _Files, bar) -> None:
    """Decode pieces longest first and file each result as a chunk of its file."""
    pieces = sorted(pieces, key=lambda p: -p.seconds)
    bar.total = (bar.total or 0) + len(pieces)
    for start in range(0, len(pieces), batch_size):
        batch = pieces[start : start + batch_size]
        features = torch.from_numpy(np.stack([p.features for p in batch]))
        for piece, outcome in zip(
            batch, decoder.isolating(features, [p.seconds for p in batch], "--batch-size"), strict=True
        ):
            if isinstance(outcome, Exception):
                files.piece_done(piece.file, None, f"{type(outcome).__name__}: {outcome}")
                continue
            chunk = {
                "start": round(piece.segment.speech_start, 3),
                "end": round(piece.segment.speech_end, 3),
                "text": outcome.text.strip(),
                "looped": outcome.looped,
                "temperature": outcome.temperature,
                "language": outcome.language,
            }
            files.piece_done(piece.file, chunk)
        bar.update(len(batch))
