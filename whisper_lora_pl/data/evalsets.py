"""Evaluation sets beside the validation split (``data.eval_sets``): what fine-tuning may break where it did not train.

Two kinds. ``clips``: a manifest of short clips with their text (the columns of ``sources.Manifest``), scored as the
validation split is. ``long``: long recordings with reference segments, decoded as ``transcribe`` decodes long audio
and scored on the joined text, the cue times and the text under each cue (``longscore``). A manifest row of a long
set is ``{"audio": "talk.wav", "segments": [{"start": 0.5, "end": 3.2, "text": "..."}, ...]}``, or ``{"audio":
"talk.wav"}`` alone with ``talk.srt`` beside the audio. Bad segments (overlapping, empty, past the audio's end) are an
error at set-up naming the file and the segment; an audio file that cannot be read is a counted skip, as a clip is.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from whisper_lora_pl.data.audio import AudioError, AudioSpan, audio_duration
from whisper_lora_pl.data.cutsets import Lhotse
from whisper_lora_pl.data.segments import Detector
from whisper_lora_pl.data.shar import LhotseShar
from whisper_lora_pl.data.sources import Example, Manifest, read_rows

log = logging.getLogger(__name__)

SetKind = Literal["clips", "long"]


@dataclass(frozen=True)
class EvalSet:
    """One named evaluation set.

    Args:
        manifest: its file: JSONL/CSV/TSV rows of ``audio`` and ``text`` (clips) or JSONL rows of ``audio`` and
            ``segments`` (long; or an ``.srt`` beside each audio file); relative paths from the manifest's folder.
            A clip set may also be a lhotse cuts manifest (``*.jsonl.gz``) or a folder of lhotse Shar shards.
        kind: ``clips`` (scored as the validation split) or ``long`` (decoded as ``transcribe`` decodes long audio).
        language: the set's language (a Whisper code); None: the run's. Decoded with it, and normalised by it.
        detect_language: leave the language to the model, as ``transcribe --language auto`` does, and report the
            share of clips (files) whose detected language is ``language`` (``<stage>/<name>/language_accuracy``).
        every: evaluate at every N-th validation pass (a long set costs minutes on a big model): the first one
            (before training, with the full sanity check), then every N-th after it; always at test.
        speech: where speech is in long audio, as ``transcribe --speech``: ``vad`` (silero-vad), ``energy``, ``none``.
    """

    manifest: str
    kind: SetKind = "clips"
    language: str | None = None
    detect_language: bool = False
    every: int = 1
    speech: Detector = "vad"


@dataclass(frozen=True)
class LongFile:
    """A long recording and its reference segments ``(start, end, text)``, in seconds."""

    id: str
    audio: str
    segments: tuple[tuple[float, float, str], ...]
    duration: float


@dataclass
class LoadedSet:
    """An evaluation set read and checked: its clips (with durations) or its long files, and what was skipped."""

    name: str
    spec: EvalSet
    clips: list[Example] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    files: list[LongFile] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.files) if self.spec.kind == "long" else len(self.clips)

    def summary(self) -> str:
        what = "long files" if self.spec.kind == "long" else "clips"
        skips = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        return f"eval set {self.name} ({self.spec.manifest}): {len(self)} {what} kept, skipped: {skips}"


def clip_examples(name: str, path: Path) -> list[Example]:
    """A clip set's examples: a folder of lhotse Shar shards, a lhotse cuts manifest (``.jsonl.gz``), or ours."""
    if path.is_dir():
        return LhotseShar({name: str(path)}).examples(name)
    if path.name.endswith(".jsonl.gz"):
        return Lhotse(cuts={name: str(path)}).examples(name)
    return Manifest({name: str(path)}).examples(name)


def load_set(name: str, spec: EvalSet, max_duration: float) -> LoadedSet:
    """Read and check one set (``max_duration``: the longest clip the run decodes whole)."""
    if spec.every < 1:
        raise ValueError(f"data.eval_sets.{name}.every must be at least 1, got {spec.every}")
    path = Path(spec.manifest).expanduser()
    if not path.is_file() and not (spec.kind == "clips" and path.is_dir()):
        raise FileNotFoundError(f"data.eval_sets.{name}: manifest not found: {path}")
    loaded = LoadedSet(name, spec)
    if spec.kind == "clips":
        for example in clip_examples(name, path):
            reason = None
            if example.problem:
                log.warning("eval set %s: skipping row %s", name, example.problem)
                reason = example.reason
            elif not example.sentence.strip():
                reason = "empty text"
            else:
                try:
                    stated = example.duration is not None and not isinstance(example.audio, AudioSpan)
                    duration = example.duration if stated else audio_duration(example.audio)
                    if duration > max_duration:
                        reason = f"audio over {max_duration:g} s"
                except AudioError as err:
                    log.warning("eval set %s: skipping clip %s: %s", name, example.id, err)
                    reason = err.reason
            if reason:
                loaded.skipped[reason] += 1
                continue
            loaded.clips.append(example)
            loaded.durations.append(duration)
        return loaded
    for number, row in read_rows(path)[0]:
        where = f"{path}:{number}"
        if isinstance(row, str):
            raise ValueError(f"{where}: {row}")
        audio = row.get("audio")
        if not isinstance(audio, str) or not audio:
            raise ValueError(f"{where}: a long-form row needs 'audio' (a path)")
        file = Path(audio).expanduser()
        file = file if file.is_absolute() else path.parent / file
        try:
            duration = audio_duration(str(file))
        except AudioError as err:
            log.warning("eval set %s: skipping %s: %s", name, file, err)
            loaded.skipped[err.reason] += 1
            continue
        if "segments" in row:
            segments = [(s.get("start"), s.get("end"), s.get("text")) for s in row["segments"]]
        elif file.with_suffix(".srt").is_file():
            segments = read_srt(file.with_suffix(".srt"))
        else:
            raise ValueError(f"{where}: no 'segments' and no {file.with_suffix('.srt').name} beside {file}")
        loaded.files.append(
            LongFile(audio, str(file), check_segments(segments, duration, f"{where} ({file})"), duration)
        )
    return loaded


def check_segments(segments: list, duration: float, where: str) -> tuple[tuple[float, float, str], ...]:
    """Reference segments in order, each with text, inside the audio, none overlapping the next; else an error
    naming the file and the segment."""
    checked: list[tuple[float, float, str]] = []
    for n, (start, end, text) in enumerate(segments, 1):
        what = f"{where}: segment {n}"
        if not isinstance(start, int | float) or not isinstance(end, int | float) or not end > start >= 0:
            raise ValueError(f"{what}: needs 0 <= start < end in seconds, got start={start!r}, end={end!r}")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{what} ({start}-{end} s) has no text")
        if end > duration + 0.05:
            raise ValueError(f"{what} ends at {end} s, past the audio's end ({duration:.2f} s)")
        if checked and start < checked[-1][1]:
            raise ValueError(f"{what} ({start}-{end} s) overlaps segment {n - 1} (ends at {checked[-1][1]} s)")
        checked.append((float(start), float(end), text.strip()))
    if not checked:
        raise ValueError(f"{where}: no reference segments")
    return tuple(checked)


_SRT_TIME = re.compile(r"(\d+):(\d\d):(\d\d)[,.](\d{3})\s*-->\s*(\d+):(\d\d):(\d\d)[,.](\d{3})")


def read_srt(path: Path) -> list[tuple[float, float, str]]:
    """The cues of a SubRip file as (start, end, text), a cue's lines joined by a space."""
    cues = []
    for block in re.split(r"\n\s*\n", path.read_text(encoding="utf-8-sig").strip()):
        lines = block.strip().splitlines()
        timing = next((i for i, line in enumerate(lines) if _SRT_TIME.search(line)), None)
        if timing is None:
            continue
        h1, m1, s1, ms1, h2, m2, s2, ms2 = map(int, _SRT_TIME.search(lines[timing]).groups())
        start = h1 * 3600 + m1 * 60 + s1 + ms1 / 1000
        end = h2 * 3600 + m2 * 60 + s2 + ms2 / 1000
        cues.append((start, end, " ".join(line.strip() for line in lines[timing + 1 :])))
    return cues
