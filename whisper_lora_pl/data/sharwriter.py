"""Write any source's split as lhotse Shar shards of N clips: the same clips, texts and audio, ready to stream
(:class:`~whisper_lora_pl.data.shar.LhotseShar`) from another disk or an object store. lhotse is not needed.

    python -m whisper_lora_pl.data.sharwriter --config configs/demo.yaml --split train --out shards/train

The source is the config's ``data.source``. Audio goes in as FLAC (mono, 16-bit, at the sampling rate the model
uses: what the run would decode from the original, to 16-bit precision) or as the original file's bytes. A clip that
cannot be read is skipped, counted and named, as in training.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import io
import json
import logging
import re
import tarfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import soundfile as sf
import yaml
from tqdm.auto import tqdm

from whisper_lora_pl.data.audio import SAMPLING_RATE, AudioError, StoredAudio, load_audio
from whisper_lora_pl.data.sources import Example, Source

log = logging.getLogger(__name__)

AudioFormat = Literal["flac", "original"]


def cut_id(example: Example, seen: set[str]) -> str:
    """A member name that tar and lhotse keep: the clip's id with path separators and odd characters replaced,
    unique within the split."""
    base = re.sub(r"[^\w.\-]", "_", example.id) or "clip"
    name, number = base, 1
    while name in seen:
        number += 1
        name = f"{base}-{number}"
    seen.add(name)
    return name


def encoded(example: Example, audio: AudioFormat) -> tuple[bytes, str, int, int]:
    """(bytes, format, sampling rate, samples) of a clip as stored; ``AudioError`` if it cannot be read."""
    if audio == "original" and isinstance(example.audio, str | bytes | StoredAudio):
        data = example.audio.read() if isinstance(example.audio, StoredAudio) else example.audio
        raw = data if isinstance(data, bytes) else Path(data).read_bytes()
        try:
            info = sf.info(io.BytesIO(raw))
        except Exception as err:  # libsndfile raises several types
            raise AudioError(f"{example.id} is not audio soundfile reads ({err})", "unreadable audio") from err
        return raw, (info.format or "wav").lower(), info.samplerate, info.frames
    wave = load_audio(example.audio, SAMPLING_RATE)  # validated as in training: finite, not empty
    stream = io.BytesIO()
    sf.write(stream, wave, SAMPLING_RATE, format="FLAC", subtype="PCM_16")
    return stream.getvalue(), "flac", SAMPLING_RATE, len(wave)


def _member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_shards(
    examples: Iterable[Example], out: str | Path, shard_size: int = 1000, audio: AudioFormat = "flac"
) -> tuple[list[Path], Counter]:
    """Write ``examples`` as ``cuts.NNNNNN.jsonl.gz`` + ``recording.NNNNNN.tar``; the shards' paths and the skips.
    A shard's clips are held encoded in memory until it is written (1000 clips of 5 s in FLAC: about 100 MB)."""
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    skipped: Counter = Counter()
    written: list[Path] = []
    seen: set[str] = set()
    pending: list[tuple[dict, str, bytes]] = []
    for example in examples:
        if example.problem:
            log.warning("skipping row %s", example.problem)
            skipped[example.reason] += 1
            continue
        try:
            data, kind, rate, samples = encoded(example, audio)
        except AudioError as err:
            log.warning("skipping clip %s: %s", example.id, err)
            skipped[err.reason] += 1
            continue
        pending.append((_cut(cut_id(example, seen), example, rate, samples), kind, data))
        if len(pending) == shard_size:
            written.append(_write_shard(out, len(written), pending))
            pending = []
    if pending:
        written.append(_write_shard(out, len(written), pending))
    return written, skipped


def _cut(name: str, example: Example, rate: int, samples: int) -> dict:
    """A lhotse MonoCut manifest for a clip stored whole in a shard."""
    duration = samples / rate
    recording = {
        "id": name,
        "sources": [{"type": "shar", "channels": [0], "source": ""}],
        "sampling_rate": rate,
        "num_samples": samples,
        "duration": duration,
        "channel_ids": [0],
    }
    supervision = {"id": name, "recording_id": name, "start": 0, "duration": duration, "channel": 0}
    supervision |= {"text": example.sentence} | ({"language": example.language} if example.language else {})
    cut = {"id": name, "start": 0, "duration": duration, "channel": 0, "supervisions": [supervision]}
    return cut | {"recording": recording, "type": "MonoCut"}


def _write_shard(out: Path, number: int, clips: list[tuple[dict, str, bytes]]) -> Path:
    cuts = out / f"cuts.{number:06d}.jsonl.gz"
    with (
        gzip.open(cuts, "wt", encoding="utf-8") as lines,
        tarfile.open(out / f"recording.{number:06d}.tar", "w", format=tarfile.USTAR_FORMAT) as archive,
    ):
        for cut, kind, data in clips:
            lines.write(json.dumps(cut, ensure_ascii=False) + "\n")
            _member(archive, f"{cut['id']}.{kind}", data)  # the audio, then its recording manifest (lhotse's order)
            _member(archive, f"{cut['id']}.json", json.dumps(cut["recording"]).encode())
    return cuts


def source_from_config(config: str | Path) -> Source:
    """The ``data.source`` of a training config (``class_path`` + ``init_args``)."""
    spec = (yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}).get("data", {}).get("source")
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"{config} has no data.source with a class_path")
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**(spec.get("init_args") or {}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a training config: its data.source is read")
    parser.add_argument("--split", required=True, help="split expression, e.g. train or train+dev")
    parser.add_argument("--out", required=True, help="folder for the shards (created)")
    parser.add_argument("--shard-size", type=int, default=1000, help="clips per shard (default 1000)")
    parser.add_argument("--audio", choices=["flac", "original"], default="flac", help="how audio is stored")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    examples = source_from_config(args.config).examples(args.split)
    bar = tqdm(examples, desc="writing shards", unit="clip")
    shards, skipped = write_shards(bar, args.out, args.shard_size, args.audio)
    skips = ", ".join(f"{count} {why}" for why, count in sorted(skipped.items())) or "none"
    print(f"{len(examples) - sum(skipped.values())} clips in {len(shards)} shards in {args.out}; skipped: {skips}")


if __name__ == "__main__":
    main()
