"""Lhotse Shar shards (``cuts.000000.jsonl.gz`` beside ``recording.000000.tar``), in a local folder or at any fsspec
URL, read without lhotse: the cuts' metadata once at set-up, each clip's audio by its place in its tar when a worker
needs it. A corpus larger than the disk is never copied; a step reads only its batch's members, so a resumed run
starts reading at its next batch (no replay), and :class:`~whisper_lora_pl.data.shardplan.ShardBatches` keeps
each rank and worker inside its own shards.

The format is lhotse's (``CutSet.to_shar``, ``CutSet.from_shar`` reads what ``write_shards`` writes): per shard, one
JSON line per cut, and in the tar per cut its audio (``<cut id>.<format>``) then its recording manifest
(``<cut id>.json``), or ``.nodata``/``.nometa`` for a cut without audio.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from whisper_lora_pl.data.sources import Example, Source, malformed

log = logging.getLogger(__name__)

SHARD = re.compile(r"cuts\.(\d+)\.jsonl\.gz$")


def _is_url(path: str) -> bool:
    return "://" in path


def _open(path: str):
    """A local file, or a file at an fsspec URL (``s3://``, ``gs://``, ``https://``, ...)."""
    if _is_url(path):
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(path, "rb")


def _exists(path: str) -> bool:
    if _is_url(path):
        import fsspec

        fs, inner = fsspec.core.url_to_fs(path)
        return fs.exists(inner)
    return Path(path).is_file()


def list_shards(folder: str) -> list[tuple[str, str]]:
    """(cuts manifest, recording tar) of each shard of a Shar folder, in shard order."""
    if _is_url(folder):
        import fsspec

        fs, inner = fsspec.core.url_to_fs(folder)
        protocol = folder.split("://")[0]
        names = [f"{protocol}://{p}" for p in fs.glob(f"{inner.rstrip('/')}/cuts.*.jsonl.gz")]
    else:
        names = [str(p) for p in Path(folder).expanduser().glob("cuts.*.jsonl.gz")]
    shards = sorted((int(SHARD.search(n).group(1)), n) for n in names if SHARD.search(n))
    if not shards:
        raise FileNotFoundError(f"no Shar shards (cuts.NNNNNN.jsonl.gz) in {folder}")
    return [
        (cuts, cuts[: -len(f"cuts.{number:06d}.jsonl.gz")] + f"recording.{number:06d}.tar") for number, cuts in shards
    ]


@dataclass(frozen=True)
class ShardMember:
    """One clip's encoded audio inside a shard's tar: ``size`` bytes at ``offset`` (a range read, nothing else of the
    shard is read). ``shard`` is its shard's place in the split, which the planner deals out to ranks and workers."""

    tar: str
    offset: int
    size: int
    name: str
    shard: int

    def read(self) -> bytes:
        with _open(self.tar) as handle:
            handle.seek(self.offset)
            data = handle.read(self.size)
        if len(data) != self.size:
            return b""  # a shard cut short: the decoder counts an empty clip
        return data

    def __str__(self) -> str:
        return f"{self.tar}:{self.name}"


def tar_members(tar: str) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of every member, from the headers alone (seeks over the data)."""
    with _open(tar) as handle, tarfile.open(fileobj=handle, mode="r:") as archive:
        return [(m.name, m.offset_data, m.size) for m in archive.getmembers() if m.isfile()]


def read_shard(cuts_path: str, tar: str, shard: int, join_with: str) -> list[Example]:
    """The examples of one shard; a cut without text, a missing or unreadable tar, a member that is not its cut's
    are counted skips that name the shard."""
    where = f"{cuts_path}"
    try:
        with _open(cuts_path) as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
            rows = [line for line in lines if line.strip()]
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        return [malformed(where, f"cannot read the shard's cuts ({err})", "unreadable shard")]
    try:
        members = [m for m in tar_members(tar) if not m[0].endswith((".json", ".nometa"))] if _exists(tar) else None
        problem = None if members is not None else ("missing shard", f"{tar} does not exist")
    except (OSError, tarfile.TarError) as err:
        members, problem = None, ("unreadable shard", f"{tar} is not a readable tar ({err})")
    out = []
    for line_number, line in enumerate(rows, 1):
        here = f"{where}:{line_number}"
        try:
            cut = json.loads(line)
            cut_id, duration = str(cut["id"]), float(cut["duration"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            out.append(malformed(here, f"not a cut ({err})"))
            continue
        if problem is not None:
            out.append(malformed(here, problem[1], problem[0]))
            continue
        if line_number > len(members):
            out.append(malformed(here, f"{tar} holds no audio for cut {cut_id}", "missing audio"))
            continue
        name, offset, size = members[line_number - 1]
        if name.endswith(".nodata"):
            out.append(malformed(here, f"cut {cut_id} has no audio in {tar}", "missing audio"))
            continue
        if name.rsplit(".", 1)[0] != cut_id:
            out.append(malformed(here, f"{tar} member {name} is not cut {cut_id}'s audio", "unreadable shard"))
            continue
        supervisions = sorted(cut.get("supervisions") or [], key=lambda s: s.get("start", 0))
        text = join_with.join(s["text"].strip() for s in supervisions if (s.get("text") or "").strip())
        language = next((s["language"] for s in supervisions if s.get("language")), None)
        audio = ShardMember(tar, offset, size, name, shard)
        out.append(Example(audio, text, cut_id, duration=duration, language=language))
    return out


class LhotseShar(Source):
    """Splits stored as lhotse Shar shards, each split a folder or an fsspec URL (``s3://bucket/cv-zh/train``).

    Training batches come from :class:`~whisper_lora_pl.data.shardplan.ShardBatches` (``data.shard_window``): every
    rank and worker reads its own shards, dealt afresh each epoch. Evaluation splits are read clip by clip, exactly as
    any other source's (each member by its offset), and so are packed windows (``data.pack_windows``).

    Args:
        splits: split name -> Shar folder or URL.
        join_with: what joins the texts of a cut's supervisions (``""`` for Chinese).
    """

    def __init__(self, splits: dict[str, str], join_with: str = " ") -> None:
        self.folders = {name: str(Path(f).expanduser()) if not _is_url(f) else f for name, f in splits.items()}
        self.join_with = join_with

    def card_dataset(self) -> dict[str, str]:
        first = next(iter(self.folders.values()), "shar")
        return {"type": "lhotse-shar", "name": f"lhotse Shar ({first})"}

    def splits(self) -> list[str]:
        return list(self.folders)

    def read_split(self, split: str) -> list[Example]:
        out: list[Example] = []
        for number, (cuts, tar) in enumerate(list_shards(self.folders[split])):
            out.extend(read_shard(cuts, tar, number, self.join_with))
        return out
