"""The largest training and evaluation batches a config fits on the device at hand, printed as config lines.

    python -m whisper_lora_pl.batch_probe --config configs/whisper-large-v2-zh.yaml [any option fit takes]

It builds the run as ``fit`` would (the same config and overrides, the model on this process's device) and runs the
worst batches of ``memory.MemoryCheck`` at growing sizes: doubling from one clip while they fit, then bisection
(NeMo's OOMptimizer searches its buckets' batch sizes the same way). Training probes what the config sizes batches
by (``data.batch_seconds``, else ``data.batch_size``) with the worst batch it makes: the most clips at the full
window when a share of steps keeps it; evaluation probes ``data.eval_batch_size``. Each trial is one forward and
backward, or one ``generate`` to the whole token budget. On the CPU, memory runs out by the kernel killing the
process, so it refuses to probe unless ``--limit-gib`` says where to stop (a trial whose resident peak passes it
counts as not fitting).
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from whisper_lora_pl.training.cli import main as cli_main
from whisper_lora_pl.training.memory import (
    GIB,
    Shape,
    decode_once,
    largest_fitting,
    left_as_it_was,
    train_once,
    worst_evaluation_batch,
    worst_training_batch,
)


def probe(argv: list[str], limit_gib: float | None = None) -> dict[str, float]:
    """The largest values of the batch settings that fit, by name (``data.batch_seconds`` or
    ``data.batch_size``, and ``data.eval_batch_size``)."""
    cli = cli_main(argv, run=False)
    trainer, module, datamodule = cli.trainer, cli.model, cli.datamodule
    trainer._data_connector.attach_datamodule(module, datamodule)
    trainer.strategy.connect(module)
    trainer.strategy.setup_environment()
    device = trainer.strategy.root_device
    if device.type == "cpu" and limit_gib is None:
        raise SystemExit(
            "on the CPU memory runs out by the kernel killing the process, not by an error a probe can catch: "
            "give --limit-gib (the memory the run may use), or probe on the GPU you will train on"
        )
    limit = math.inf if limit_gib is None else limit_gib * GIB
    datamodule.prepare_data()
    datamodule.setup("fit")
    module.configure_model()
    found: dict[str, float] = {}
    with left_as_it_was(module):
        worst = worst_training_batch(module, datamodule)
        ceiling = len(datamodule.prepared["train"].durations)
        clips = largest_fitting(lambda s: train_once(module, s, trainer), worst, device, ceiling, limit=limit)
        if clips == 0:
            raise SystemExit(f"not one training clip fits ({worst}): see docs/training.md#memory-the-worst-batch-first")
        if datamodule.batch_seconds and not (datamodule.pack_windows or datamodule.timestamp_share > 0):
            # a bucket's batch holds floor(batch_seconds / its longest clip) clips: the shortest bucket the most
            found["data.batch_seconds"] = math.ceil(10 * clips * worst.longest) / 10
        else:
            found["data.batch_size"] = clips
        print(f"training: {Shape(clips, worst.seconds, worst.tokens)} fit", file=sys.stderr)
        if "val" in datamodule.prepared:
            evaluation = worst_evaluation_batch(module, datamodule)
            ceiling = len(datamodule.prepared["val"].durations)
            clips = largest_fitting(lambda s: decode_once(module, s), evaluation, device, ceiling, limit=limit)
            found["data.eval_batch_size"] = max(1, clips)
            print(f"evaluation: {Shape(clips, evaluation.seconds, 0)} fit", file=sys.stderr)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# the largest batches that fit {device} ({name}) for this config, its worst batch of each:")
    print("data:")
    for key, value in found.items():
        print(f"  {key.removeprefix('data.')}: {value:g}")
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--limit-gib", type=float, help="on the CPU: the resident memory a trial may reach")
    args, rest = parser.parse_known_args(argv)
    probe(rest, args.limit_gib)


if __name__ == "__main__":
    main()
