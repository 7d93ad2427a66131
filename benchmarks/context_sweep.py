"""Encoder context vs held-out CER and speed: the demo recipe at several ``model.context_seconds`` and seeds.

    python benchmarks/context_sweep.py --contexts 30 15 10 --seeds 0 1

Each run is ``configs/demo.yaml`` (real whisper-base, int8 + LoRA, 20 steps of 8 clips) in a fresh process, without
the evaluation before training; it reports the test CER after training, the seconds spent in training steps and in
the evaluation pass, and the ratios against the first context given. Runs alternate contexts within each seed, so
a slow stretch of the machine does not land on one setting.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def one_run(context: float, seed: int, extra: list[str]) -> dict:
    """Runs in the child process: fit the demo, time the training steps and the evaluation pass."""
    from demo_run import Clock, demo_args

    from whisper_lora_pl.training.cli import main

    with tempfile.TemporaryDirectory() as folder:
        cli = main(demo_args(folder, seed, f"--model.context_seconds={context}", *extra), run=False)
        clock = Clock()
        cli.trainer.callbacks.append(clock)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        metrics = cli.model.eval_history[-1][1]
        result = {
            "context": context,
            "seed": seed,
            "cer": metrics["val/cer"],
            "looped": metrics["val/looped"],
            "train_s": clock.train,
            "eval_s": clock.evaluation,
        }
        if cli.model.hparams.get("encoder_length") == "dynamic":  # and what the pipeline / faster-whisper see
            cli.model.hparams.encoder_length = "padded"
            cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
            result["cer_padded"] = cli.model.eval_history[-1][1]["val/cer"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="any other --key=value (e.g. --model.encoder_length=dynamic) is handed to every run's train.py",
    )
    parser.add_argument("--contexts", type=float, nargs="+", default=[30.0, 15.0, 10.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--child", nargs=2, type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="also write every run as JSON lines here")
    args, extra = parser.parse_known_args()
    if args.child:
        print(json.dumps(one_run(args.child[0], int(args.child[1]), extra)))
        return
    runs = []
    for seed in args.seeds:
        for context in args.contexts:
            command = [sys.executable, __file__, "--child", str(context), str(seed), *extra]
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
            if args.out:
                with args.out.open("a") as handle:
                    handle.write(json.dumps(runs[-1]) + "\n")
    base = args.contexts[0]

    def median(context: float, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["context"] == context)

    header = f"| context | test CER per seed | training s | evaluation s | vs {base:g} s: train, eval |"
    print("\n" + header)
    print("| --- | --- | --- | --- | --- |")
    for context in args.contexts:
        cers = ", ".join(f"{r['cer']:.3f}" for r in runs if r["context"] == context)
        train, evaluation = median(context, "train_s"), median(context, "eval_s")
        speed = f"{median(base, 'train_s') / train:.2f}x, {median(base, 'eval_s') / evaluation:.2f}x"
        print(f"| {context:g} s | {cers} | {train:.1f} | {evaluation:.1f} | {speed} |")


if __name__ == "__main__":
    main()
