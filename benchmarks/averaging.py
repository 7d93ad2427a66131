"""Checkpoint averaging on the demo: the test CER of the last checkpoint against the average of the last N.

    python benchmarks/averaging.py --seeds 0 1 2 --steps 10 15 20

Each seed fits configs/demo.yaml as shipped (checkpoints every 5 steps; its evaluation sets and the sanity pass off,
which change no weight), then ``train.py test`` scores the last checkpoint and the average of the checkpoints at
``--steps`` (``whisper_lora_pl.training.average``) on the 48 held-out clips. Prints one table.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def train_py(*args: str) -> None:
    subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, check=True, capture_output=True)


def test_cer(checkpoint: Path, folder: Path) -> float:
    train_py("test", "--config", "configs/demo.yaml", "--data.eval_sets=null", f"--ckpt_path={checkpoint}",
             "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={folder}")  # fmt: skip
    (path,) = folder.glob("**/metrics.csv")
    rows = [r for r in csv.DictReader(path.open()) if r.get("test/cer")]
    return float(rows[-1]["test/cer"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 15, 20], help="checkpoints averaged")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "averaging")
    args = parser.parse_args()
    from whisper_lora_pl.training.average import average_checkpoints

    rows = []
    for seed in args.seeds:
        folder = args.out / f"seed{seed}"
        checkpoints = folder / "checkpoints"
        callbacks = folder / "callbacks.yaml"
        folder.mkdir(parents=True, exist_ok=True)
        callbacks.write_text(
            "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
            f"      init_args: {{dirpath: {checkpoints}, filename: '{{step}}', every_n_train_steps: 5,\n"
            "                  save_top_k: -1}\n"
        )
        train_py("fit", "--config", "configs/demo.yaml", "--config", str(callbacks), f"--seed_everything={seed}",
                 "--data.eval_sets=null", "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=0",
                 f"--trainer.default_root_dir={folder}")  # fmt: skip
        chosen = [checkpoints / f"step={s}.ckpt" for s in args.steps]
        averaged = average_checkpoints(chosen, folder / "averaged.ckpt")
        last, mean = test_cer(chosen[-1], folder / "test-last"), test_cer(averaged, folder / "test-averaged")
        rows.append((seed, last, mean))
        print(f"seed {seed}: last {last:.4f}  average of steps {args.steps} {mean:.4f}", flush=True)
    print("| seed | last checkpoint | average |\n| --- | --- | --- |")
    for seed, last, mean in rows:
        print(f"| {seed} | {last:.4f} | {mean:.4f} |")
    lasts, means = [r[1] for r in rows], [r[2] for r in rows]
    print(f"| median | {statistics.median(lasts):.4f} | {statistics.median(means):.4f} |")


if __name__ == "__main__":
    main()
