"""Make the Mandarin demo corpus: our own sentences spoken by espeak-ng, in the Common Voice release layout.

    apt-get install espeak-ng && python scripts/make_demo_corpus.py data/demo-zh-CN

Run once; the result is committed (under 10 MB), so neither the demo nor the tests need espeak-ng.
Sentences are composed from a small fixed vocabulary, so the splits share words but never a sentence;
dev and test are spoken by voices (espeak variants, speeds, pitches) that train never hears.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import random
import subprocess
from pathlib import Path

import soundfile as sf

from whisper_lora_pl.data.audio import load_audio, resample
from whisper_lora_pl.data.sources import CV11_COLUMNS

WHO = ["我", "你", "他", "她", "我们", "他们", "老师", "学生", "妈妈", "爸爸", "朋友", "哥哥", "妹妹", "医生"]
WHEN = ["今天", "明天", "昨天", "早上", "晚上", "下午", "周末", "现在"]
WHERE = ["在家里", "在学校", "在公园", "在饭店", "在图书馆", "在商店", "在办公室"]
DOES = [
    "喝茶",
    "吃米饭",
    "看书",
    "买水果",
    "打电话",
    "写作业",
    "听音乐",
    "做饭",
    "学习中文",
    "休息",
    "看电影",
    "打篮球",
    "等公共汽车",
    "洗衣服",
]
SAYINGS = [
    "天气很好",
    "外面下雨了",
    "这个苹果很甜",
    "请把门关上",
    "火车马上就要开了",
    "我们一起去吃饭吧",
    "这本书非常有意思",
    "明天要早点起床",
    "你的中文说得很好",
    "今天的工作做完了",
    "房间里有点冷",
    "这条路很长",
]

# espeak-ng Mandarin voice variants, speeds (words per minute) and pitches (0-99)
TRAIN_VOICES = [("cmn+m1", 160, 45), ("cmn+f2", 175, 60), ("cmn+m3", 150, 35), ("cmn+f1", 185, 55)]
DEV_VOICES = [("cmn+f4", 170, 50)]
TEST_VOICES = [("cmn+m4", 165, 40), ("cmn+f5", 180, 65)]


def sentences(seed: int = 0) -> list[str]:
    """Every composed sentence, shuffled deterministically."""
    composed = [f"{when}{who}{where}{does}" for who, when, where, does in itertools.product(WHO, WHEN, WHERE, DOES)]
    rng = random.Random(seed)
    rng.shuffle(composed)
    return SAYINGS + composed


def speak(text: str, voice: str, speed: int, pitch: int) -> bytes:
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    return wav


def write_split(folder: Path, split: str, texts: list[str], voices: list[tuple[str, int, int]]) -> int:
    rows = []
    for i, text in enumerate(texts):
        voice, speed, pitch = voices[i % len(voices)]
        wave = load_audio(speak(text, voice, speed, pitch))  # espeak's 22,050 Hz -> 16 kHz mono
        name = f"demo_zh-CN_{split}_{i:04d}.mp3"
        # stored as Common Voice stores it: 48 kHz mp3
        sf.write(folder / "clips" / name, resample(wave, 16_000, 48_000), 48_000, format="MP3", compression_level=0.9)
        client = hashlib.sha1(voice.encode()).hexdigest()[:16]
        rows.append({"client_id": client, "path": name, "sentence": text, "locale": "zh-CN", "accents": voice})
    with (folder / f"{split}.tsv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, CV11_COLUMNS, delimiter="\t", quoting=csv.QUOTE_NONE, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({c: row.get(c, "") for c in CV11_COLUMNS} for row in rows)
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="corpus root; clips go to OUT/zh-CN/clips")
    parser.add_argument("--train", type=int, default=160, help="training sentences")
    parser.add_argument("--dev", type=int, default=16, help="dev sentences")
    parser.add_argument("--test", type=int, default=48, help="test sentences")
    args = parser.parse_args()
    pool = sentences()
    test, dev, train = (
        pool[: args.test],
        pool[args.test : args.test + args.dev],
        pool[args.test + args.dev : args.test + args.dev + args.train],
    )
    assert not (set(train) & set(dev) or set(train) & set(test) or set(dev) & set(test))
    folder = args.out / "zh-CN"
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    for split, texts, voices in (("train", train, TRAIN_VOICES), ("dev", dev, DEV_VOICES), ("test", test, TEST_VOICES)):
        print(split, write_split(folder, split, texts, voices), "clips")


if __name__ == "__main__":
    main()
