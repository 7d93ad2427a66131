"""A split's metadata in columns instead of one Python object per clip: the main process and every DataLoader worker
hold it, so a corpus of millions of clips must cost bytes a clip, not kilobytes (an ``Example`` with its strings, its
label ids as a list of ints and its duration as a float cost about 1.4 kB a clip; these columns under 0.2 kB).
Each item is rebuilt when it is asked for, which a worker does once per clip per epoch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from whisper_lora_pl.data.shar import ShardMember
from whisper_lora_pl.data.sources import Example


class StringTable(Sequence[str]):
    """Strings as one UTF-8 buffer and their end offsets."""

    def __init__(self, strings: Sequence[str]) -> None:
        encoded = [s.encode("utf-8") for s in strings]
        self.ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)
        self.buffer = b"".join(encoded)

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        start = int(self.ends[index - 1]) if index > 0 else 0
        return self.buffer[start : int(self.ends[index])].decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))


class TokenTable(Sequence[list[int]]):
    """Label ids of every clip as one flat array and their end offsets."""

    def __init__(self, labels: Sequence[Sequence[int]]) -> None:
        self.ends = np.cumsum([len(ids) for ids in labels], dtype=np.int64)
        total = int(self.ends[-1]) if len(self.ends) else 0
        self.ids = np.fromiter((i for ids in labels for i in ids), dtype=np.uint32, count=total)

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, index: int) -> list[int]:  # type: ignore[override]
        start = int(self.ends[index - 1]) if index > 0 else 0
        return self.ids[start : int(self.ends[index])].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        return (self[i] for i in range(len(self)))

    def lengths(self) -> np.ndarray:
        """Each clip's number of label ids."""
        return np.diff(self.ends, prepend=0)


class ShardExamples(Sequence[Example]):
    """Examples whose audio lives in Shar shards, as columns: the shard, the tar (a short table), the member's offset
    and size, its extension, the clip's id, text, duration and language."""

    def __init__(self, examples: Sequence[Example]) -> None:
        members: list[ShardMember] = [example.audio for example in examples]  # type: ignore[misc]
        self.tars = sorted({m.tar for m in members})
        where = {tar: i for i, tar in enumerate(self.tars)}
        self.tar = np.fromiter((where[m.tar] for m in members), dtype=np.int32, count=len(members))
        self.shard = np.fromiter((m.shard for m in members), dtype=np.int32, count=len(members))
        self.offset = np.fromiter((m.offset for m in members), dtype=np.int64, count=len(members))
        self.size = np.fromiter((m.size for m in members), dtype=np.int64, count=len(members))
        suffixes = [m.name[len(e.id) :] for m, e in zip(members, examples, strict=True)]  # ".flac"
        self.suffixes = sorted(set(suffixes))
        self.suffix = np.asarray([self.suffixes.index(s) for s in suffixes], dtype=np.int16)
        self.ids = StringTable([e.id for e in examples])
        self.sentences = StringTable([e.sentence for e in examples])
        self.durations = np.asarray([e.duration for e in examples], dtype=np.float64)
        self.languages = sorted({e.language or "" for e in examples})
        self.language = np.asarray([self.languages.index(e.language or "") for e in examples], dtype=np.int16)

    def __len__(self) -> int:
        return len(self.tar)

    def __getitem__(self, index: int) -> Example:  # type: ignore[override]
        clip = self.ids[index]
        audio = ShardMember(
            self.tars[self.tar[index]],
            int(self.offset[index]),
            int(self.size[index]),
            clip + self.suffixes[self.suffix[index]],
            int(self.shard[index]),
        )
        language = self.languages[self.language[index]] or None
        return Example(audio, self.sentences[index], clip, duration=float(self.durations[index]), language=language)

    def __iter__(self) -> Iterator[Example]:
        return (self[i] for i in range(len(self)))


def shard_numbers(examples: Sequence[Example]) -> np.ndarray | None:
    """The shard of every example, or None unless all of them live in shards."""
    if isinstance(examples, ShardExamples):
        return examples.shard
    if examples and all(isinstance(e.audio, ShardMember) for e in examples):
        return np.asarray([e.audio.shard for e in examples], dtype=np.int32)
    return None


def compact(examples: list[Example]) -> Sequence[Example]:
    """Columns for a split of shard members (a folder's or the hub's examples are kept as they are: their audio
    references are small already, or shared)."""
    if examples and all(isinstance(e.audio, ShardMember) and e.audio.name.startswith(e.id) for e in examples):
        return ShardExamples(examples)
    return examples
