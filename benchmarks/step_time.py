"""Training time of the demo's settings, without evaluation: seconds per step and per epoch, in one run.

    python benchmarks/step_time.py --settings shipped ts50-pauses keep20 --seeds 0 1

Each run is ``configs/demo.yaml`` with one of ``retention.py``'s settings, fitted in a child process (one at a time,
so the runs do not share the cores) with no validation; a clock sums its training steps (``demo_run.Clock``). The
table gives each setting's median over the seeds and its ratio to the first setting's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(setting: str, seed: int) -> None:
    from demo_run import Clock, demo_args
    from retention import SETTINGS

    from whisper_lora_pl.training.cli import main

    with tempfile.TemporaryDirectory() as folder:
        cli = main(demo_args(folder, seed, "--trainer.limit_val_batches=0", *SETTINGS[setting]), run=False)
        clock = Clock()
        cli.trainer.callbacks.append(clock)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        steps = cli.trainer.global_step
        print(json.dumps({"setting": setting, "seed": seed, "train_s": clock.train, "steps": steps}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["shipped", "ts50-pauses"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    runs: dict[str, list[dict]] = {}
    for seed in args.seeds:  # settings alternate, so a slow spell of the machine does not land on one of them
        for setting in args.settings:
            done = subprocess.run([sys.executable, __file__, "--child", setting, str(seed)], cwd=HERE.parent,
                                  capture_output=True, text=True)  # fmt: skip
            if done.returncode:
                raise RuntimeError(f"{setting} seed {seed} failed:\n{done.stderr[-3000:]}")
            run = json.loads(done.stdout.strip().splitlines()[-1])
            runs.setdefault(setting, []).append(run)
            print(f"{setting} seed {seed}: {run['steps']} steps in {run['train_s']:.1f} s", flush=True)
    first = None
    print("\n| setting | steps | training s | s per step | per step vs first |\n|---|---|---|---|---|")
    for setting, done in runs.items():
        per_step = statistics.median(r["train_s"] / r["steps"] for r in done)
        first = first or per_step
        total = statistics.median(r["train_s"] for r in done)
        print(f"| {setting} | {done[0]['steps']} | {total:.1f} | {per_step:.2f} | {per_step / first:.2f}x |")


if __name__ == "__main__":
    main()
