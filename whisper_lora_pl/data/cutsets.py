"""Corpora prepared with lhotse (``lhotse prepare <corpus>``: recipes for over a hundred corpora): a CutSet manifest,
or a recordings and a supervisions manifest, per split. Needs the ``lhotse`` extra (``pip install
'whisper-lora-pl[lhotse]'``); Shar shards are read without it (:mod:`whisper_lora_pl.data.shar`).

A cut that points to a file is read by our decoder (soundfile + soxr; a cut of a longer recording reads only its
stretch); a cut whose audio lhotse holds (in memory, a URL, a command) is decoded by lhotse in the worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from whisper_lora_pl.data.audio import AudioSpan
from whisper_lora_pl.data.sources import Example, Source


def _lhotse():
    try:
        import lhotse
    except ImportError as err:
        raise ImportError("data.source Lhotse needs lhotse: pip install 'whisper-lora-pl[lhotse]'") from err
    return lhotse


class LhotseCut:
    """A cut's audio decoded by lhotse (in-memory, URL or command sources): the cut's manifest travels to the worker,
    which rebuilds the cut and loads its samples."""

    __slots__ = ("cut", "duration")

    def __init__(self, cut: dict, duration: float) -> None:
        self.cut, self.duration = cut, duration

    def samples(self) -> tuple[np.ndarray, int]:
        from lhotse.serialization import deserialize_item

        cut = deserialize_item(self.cut)
        return cut.load_audio(), cut.sampling_rate

    def __str__(self) -> str:
        return f"lhotse cut {self.cut.get('id')}"


class Lhotse(Source):
    """A corpus in lhotse manifests.

    Args:
        cuts: split name -> CutSet manifest (``cuts_train.jsonl.gz``).
        recordings: split name -> RecordingSet manifest, for splits given as recordings + supervisions.
        supervisions: split name -> SupervisionSet manifest, beside ``recordings``.
        clips: ``cut``: each cut is one clip, the texts of its supervisions joined in time order by ``join_with``;
            ``supervision``: each supervision is one clip (its cut trimmed to it), for corpora whose cuts are
            whole recordings with many segments.
        join_with: what joins the texts of a cut's supervisions (``""`` for Chinese, a space for most languages).
    """

    def __init__(
        self,
        cuts: dict[str, str] | None = None,
        recordings: dict[str, str] | None = None,
        supervisions: dict[str, str] | None = None,
        clips: Literal["cut", "supervision"] = "cut",
        join_with: str = " ",
    ) -> None:
        self.cuts = {split: Path(path).expanduser() for split, path in (cuts or {}).items()}
        self.recordings = {split: Path(path).expanduser() for split, path in (recordings or {}).items()}
        self.supervisions = {split: Path(path).expanduser() for split, path in (supervisions or {}).items()}
        if set(self.recordings) != set(self.supervisions):
            raise ValueError("Lhotse: recordings and supervisions must name the same splits")
        if set(self.cuts) & set(self.recordings):
            raise ValueError(f"Lhotse: splits {sorted(set(self.cuts) & set(self.recordings))} are given twice")
        self.clips, self.join_with = clips, join_with

    def card_dataset(self) -> dict[str, str]:
        first = next(iter({**self.cuts, **self.recordings}.values()), Path("lhotse"))
        return {"type": "lhotse", "name": f"lhotse manifests ({first.parent.name or first.name})"}

    def splits(self) -> list[str]:
        return [*self.cuts, *self.recordings]

    def read_split(self, split: str) -> list[Example]:
        lhotse = _lhotse()
        for path in [self.cuts.get(split), self.recordings.get(split), self.supervisions.get(split)]:
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"lhotse manifest for split {split!r} not found: {path}")
        if split in self.cuts:
            cuts, where = lhotse.CutSet.from_file(self.cuts[split]), self.cuts[split]
        else:
            where = self.recordings[split]
            cuts = lhotse.CutSet.from_manifests(
                recordings=lhotse.load_manifest(where), supervisions=lhotse.load_manifest(self.supervisions[split])
            )
        if self.clips == "supervision":
            cuts = cuts.trim_to_supervisions(keep_overlapping=False)
        return [self.example(cut, where.parent) for cut in cuts]

    def example(self, cut, folder: Path) -> Example:
        """One clip of a cut: its text, its language and where its audio is."""
        supervisions = sorted(cut.supervisions, key=lambda s: s.start)
        text = self.join_with.join(s.text.strip() for s in supervisions if s.text and s.text.strip())
        language = next((s.language for s in supervisions if s.language), None)
        return Example(_audio(cut, folder), text, cut.id, duration=float(cut.duration), language=language)


def _audio(cut, folder: Path) -> str | AudioSpan | LhotseCut:
    """A file path (a whole recording), a span of a file, or the cut itself for lhotse to decode."""
    recording = cut.recording if cut.has_recording else None
    if recording is None or len(recording.sources) != 1 or recording.sources[0].type != "file":
        return LhotseCut(cut.to_dict(), float(cut.duration))
    path = Path(recording.sources[0].source)
    if not path.is_absolute() and not path.exists() and (folder / path).exists():
        path = folder / path  # written relative to the manifest's folder
    if cut.start == 0 and abs(cut.duration - recording.duration) < 1e-3:
        return str(path)
    return AudioSpan(str(path), float(cut.start), float(cut.duration))
