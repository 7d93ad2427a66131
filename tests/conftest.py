"""Offline fixtures: a tiny random Whisper folder, generated audio, and a Common Voice release layout."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from whisper_lora_pl.convert import tiny_whisper
from whisper_lora_pl.data.sources import CV11_COLUMNS

REPO = Path(__file__).resolve().parent.parent
SENTENCES = ["今天天气很好", "我们去公园散步", "这是一个测试", "请把门关上", "他喜欢喝茶", "明天见"]


def _default_sigint() -> None:
    """In the child: SIGINT as in a terminal. A test suite started in the background of a script (``cmd &``)
    inherits SIGINT ignored, and so would train.py: a signal test would then wait for an exit that never comes."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def train_py(*args: str, cwd: Path, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    """``python train.py ...`` in a fresh process, as a user (or a launcher) runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "train.py"), *args]
    if not wait:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_default_sigint,
        )
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def tiny_args(model: str | Path, corpus: Path, folder: Path, *extra: str) -> list[str]:
    """``--config configs/tiny-cpu.yaml`` with a tiny model, a corpus and a run folder: the arguments (after the
    subcommand) of every test that trains or evaluates the tiny model through the CLI."""
    return [
        "--config",
        str(REPO / "configs" / "tiny-cpu.yaml"),
        f"--model.model_name={model}",
        f"--data.source.init_args.root={corpus}",
        f"--trainer.default_root_dir={folder}",
        *extra,
    ]


def tone(seconds: float, rate: int, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    """A quiet sine with a little noise: decodable, deterministic audio of a known length."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(int(freq))
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float32)


def write_clip(path: Path, seconds: float = 1.0, rate: int = 48_000, channels: int = 1, freq: float = 440.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, rate, channels, freq), rate)
    return path


def write_tsv(path: Path, rows: list[dict], columns: list[str] = CV11_COLUMNS) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, columns, delimiter="\t", quoting=csv.QUOTE_NONE, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})


def make_cv_release(root: Path, splits: dict[str, list[str]], locale: str = "zh-CN") -> Path:
    """``root/<locale>/clips/*.mp3`` at 48 kHz with the CV 11 TSV columns; returns ``root``."""
    folder = root / locale
    for split, sentences in splits.items():
        rows = []
        for i, sentence in enumerate(sentences):
            name = f"common_voice_{locale}_{split}_{i}.mp3"
            write_clip(folder / "clips" / name, seconds=1.0 + 0.25 * (i % 3), freq=300 + 50 * i)
            rows.append({"client_id": f"c{i}", "path": name, "sentence": sentence, "locale": locale})
        write_tsv(folder / f"{split}.tsv", rows)
    return root


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--demo-context",
        type=float,
        default=30.0,
        help="encoder context (model.context_seconds) of the slow demo and take-home checks; configs/demo.yaml: 30",
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A saved tiny random multilingual Whisper, so the real ``from_pretrained(name)`` path runs on a folder."""
    return str(tiny_whisper(tmp_path_factory.mktemp("tiny-whisper")))


@pytest.fixture(scope="session")
def cv_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cv")
    return make_cv_release(root, {"train": SENTENCES[:4], "dev": SENTENCES[4:], "test": SENTENCES[4:]})
