"""Make the demo's retention sets under ``data/demo-retention``: what fine-tuning on short Mandarin clips can break.

    apt-get install espeak-ng && python scripts/make_retention_sets.py data/demo-retention

- ``zh-long``: the demo's 48 held-out test clips (``data/demo-zh-CN``, the split the demo validates on) joined four
  by four into long files with pauses of 0.4-1.5 s and 0.5 s of silence at each end; each sentence's start and end
  are known to the sample. Long-form figures on the same clips as the clip CER: the two compare directly.
- ``en-long``: four English files of six sentences each, spoken by four espeak-ng voices (American, British,
  Scottish, Caribbean) at two speeds; sentences unlike ``tests/assets/en_eight.ogg``'s. The base's strong language.
- ``en-clips``: twelve short English sentences, one per clip, in three voices: language identification.
- ``zh-clips.jsonl``: the demo's test clips again as a manifest (no audio of its own): the trained language's
  identification, decoded with the language left to the model.

Run once; the result is committed (about 2 MB of Ogg Vorbis), so the demo and the tests need no espeak-ng. Seeded:
running it again writes the same sentences, voices and pauses.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from whisper_lora_pl.data.audio import SAMPLING_RATE, load_audio

REPO = Path(__file__).resolve().parent.parent
TEST = REPO / "data" / "demo-zh-CN" / "zh-CN"
RATE = SAMPLING_RATE

EN_LONG = [
    [
        "The library opens at nine on weekdays.",
        "Bring your card if you want to borrow a book.",
        "Children can join the reading club for free.",
        "The quiet room is upstairs, next to the maps.",
        "Computers may be used for one hour at a time.",
        "Please return every book before the end of the month.",
    ],
    [
        "It rained all night and the river rose quickly.",
        "By morning the road near the bridge was closed.",
        "Farmers moved their animals to higher fields.",
        "The school sent the pupils home before lunch.",
        "Volunteers filled sandbags outside the town hall.",
        "The water went down again two days later.",
    ],
    [
        "To make the soup, first wash and cut the carrots.",
        "Fry an onion in a little oil until it is soft.",
        "Add the carrots, some salt and a litre of water.",
        "Let everything cook slowly for twenty minutes.",
        "Blend it until it is smooth and season to taste.",
        "Serve it hot with fresh bread and a little cream.",
    ],
    [
        "Our flight was delayed by almost three hours.",
        "The airline gave everyone a voucher for dinner.",
        "We finally landed a little after midnight.",
        "The taxi driver knew a short way to the hotel.",
        "Breakfast was served on the terrace by the sea.",
        "After a long sleep we felt ready to explore.",
    ],
]
EN_VOICES = [("en-us", 150), ("en-gb", 140), ("en-gb-scotland", 160), ("en-029", 145)]
EN_CLIPS = [
    "Where is the nearest train station?",
    "I would like a cup of coffee, please.",
    "The meeting starts at half past ten.",
    "Could you open the door for me?",
    "My sister lives in a small village.",
    "We watched a film about the ocean.",
    "The shop closes early on Sundays.",
    "He forgot his umbrella on the bus.",
    "This soup is too hot to eat.",
    "They are painting the kitchen blue.",
    "Turn left at the second traffic light.",
    "The garden looks lovely in the spring.",
]
EN_CLIP_VOICES = [("en-us", 155), ("en-gb", 145), ("en-gb-x-rp", 150)]


def speak(text: str, voice: str, speed: int) -> np.ndarray:
    """espeak-ng's speech of ``text`` at 16 kHz, without its leading and trailing silence."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], capture_output=True, check=True
    )
    wave = load_audio(wav.stdout)
    spoken = np.flatnonzero(np.abs(wave) > 0.01)
    return 0.8 * wave[spoken[0] : spoken[-1] + 1]


def joined(waves: list[np.ndarray], texts: list[str], rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """The waves in a row with pauses of 0.4-1.5 s and 0.5 s of silence at each end, and each one's segment: from the
    first to the last sample of its speech (a clip's own silence at its ends is not part of its segment)."""
    pieces, segments, t = [np.zeros(RATE // 2, np.float32)], [], 0.5
    for i, (wave, text) in enumerate(zip(waves, texts, strict=True)):
        spoken = np.flatnonzero(np.abs(wave) > 0.01)
        start, end = t + spoken[0] / RATE, t + (spoken[-1] + 1) / RATE
        segments.append({"start": round(start, 3), "end": round(end, 3), "text": text})
        pieces.append(wave.astype(np.float32))
        t += len(wave) / RATE
        if i < len(waves) - 1:
            pause = np.zeros(int(rng.uniform(0.4, 1.5) * RATE), np.float32)
            pieces.append(pause)
            t += len(pause) / RATE
    pieces.append(np.zeros(RATE // 2, np.float32))
    return np.concatenate(pieces), segments


def write_ogg(path: Path, wave: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, RATE, format="OGG", subtype="VORBIS")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=REPO / "data" / "demo-retention", help="folder to write")
    out = parser.parse_args().out
    rng = np.random.default_rng(34)
    rows = list(csv.DictReader((TEST / "test.tsv").open(encoding="utf-8"), delimiter="\t"))
    relative = Path("..") / TEST.relative_to(REPO.joinpath("data")) / "clips"
    write_jsonl(out / "zh-clips.jsonl", [{"audio": str(relative / r["path"]), "text": r["sentence"]} for r in rows])
    order = rng.permutation(len(rows))
    long_rows = []
    for n in range(len(rows) // 4):
        chosen = [rows[i] for i in order[4 * n : 4 * n + 4]]
        waves = [load_audio(TEST / "clips" / r["path"]) for r in chosen]
        wave, segments = joined(waves, [r["sentence"] for r in chosen], rng)
        name = f"zh-long/zh-long-{n:02d}.ogg"
        write_ogg(out / name, wave)
        long_rows.append({"audio": name, "segments": segments})
    write_jsonl(out / "zh-long.jsonl", long_rows)
    long_rows = []
    for n, (sentences, (voice, speed)) in enumerate(zip(EN_LONG, EN_VOICES, strict=True)):
        wave, segments = joined([speak(s, voice, speed) for s in sentences], sentences, rng)
        name = f"en-long/en-long-{n:02d}.ogg"
        write_ogg(out / name, wave)
        long_rows.append({"audio": name, "segments": segments})
    write_jsonl(out / "en-long.jsonl", long_rows)
    clip_rows = []
    for n, sentence in enumerate(EN_CLIPS):
        voice, speed = EN_CLIP_VOICES[n % len(EN_CLIP_VOICES)]
        wave = np.concatenate([np.zeros(RATE // 4), speak(sentence, voice, speed), np.zeros(RATE // 4)])
        name = f"en-clips/en-clip-{n:02d}.ogg"
        write_ogg(out / name, wave.astype(np.float32))
        clip_rows.append({"audio": name, "text": sentence})
    write_jsonl(out / "en-clips.jsonl", clip_rows)
    for path in sorted(out.glob("*.jsonl")):
        print(path, sum(1 for _ in path.open(encoding="utf-8")), "rows")


if __name__ == "__main__":
    main()
