"""Evaluation speed against ``data.eval_batch_size``: ``train.py test`` of one checkpoint at several batch sizes.

    python benchmarks/eval_batch.py CHECKPOINT --batch-sizes 4 8 16 32 48 --repeats 2

Loads the checkpoint's model once, with its encoder context (the test config: ``configs/demo.yaml`` unless
``--config``), then runs the test split at each batch size in turn, ``--repeats`` rounds, alternating the order
each round so that a slow stretch of the machine does not land on one size. Prints seconds, clips/s and the CER
per pass, and medians per size: the decoding is the shared routine (budget, loop guard), so only the batching
changes, and the CER may move only by what the int8 base's batch-dependent rounding does.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a .ckpt written by `train.py fit`")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16, 32, 48])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args, extra = parser.parse_known_args()

    import torch

    from whisper_lora_pl.training.cli import main as cli_main

    torch.set_num_threads(args.threads)
    trained = torch.load(args.checkpoint, map_location="cpu", weights_only=True)["hyper_parameters"]
    cli = cli_main(
        [
            "--config",
            str(args.config),
            f"--data.source.init_args.root={REPO / 'data' / 'demo-zh-CN'}",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.callbacks=[]",
            "--data.num_workers=0",
            f"--model.context_seconds={trained['context_seconds']}",  # the data module's follows (linked)
            *extra,
        ],
        run=False,
    )
    print(f"context {cli.model.hparams.context_seconds:g} s, checkpoint {args.checkpoint}")
    runs: dict[int, list[tuple[float, float]]] = {size: [] for size in args.batch_sizes}
    for repeat in range(args.repeats):
        for size in args.batch_sizes if repeat % 2 == 0 else args.batch_sizes[::-1]:
            cli.datamodule.eval_batch_size = size
            start = time.perf_counter()
            (metrics,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=str(args.checkpoint))
            seconds = time.perf_counter() - start
            runs[size].append((seconds, metrics["test/cer"]))
            clips = len(cli.datamodule.prepared["test"].examples)
            print(f"batch {size}: {seconds:.1f} s, {clips / seconds:.3f} clips/s, CER {metrics['test/cer']:.4f}")
    base = statistics.median(s for s, _ in runs[args.batch_sizes[0]])
    print(f"\n| eval batch | seconds (median of {args.repeats}) | clips/s | vs batch {args.batch_sizes[0]} | CER |")
    print("| --- | --- | --- | --- | --- |")
    for size, passes in runs.items():
        seconds = statistics.median(s for s, _ in passes)
        cers = "/".join(f"{c:.4f}" for _, c in passes)
        print(f"| {size} | {seconds:.1f} | {clips / seconds:.3f} | {base / seconds:.2f}x | {cers} |")


if __name__ == "__main__":
    main()
