"""Average the adapters of several checkpoints of one run into one checkpoint (icefall's habit).

    python -m whisper_lora_pl.training.average runs/demo/checkpoints/averaged.ckpt \\
        runs/demo/checkpoints/step-step=10.ckpt runs/demo/checkpoints/step-step=15.ckpt runs/demo/checkpoints/last.ckpt

The adapter weights are the mean of the checkpoints' (each weight in float32); everything else (hyperparameters, the
run's pieces and timestamps, the step) is the last checkpoint's, so ``train.py test --ckpt_path``, export and
``transcribe --checkpoint`` take the result as they take any checkpoint. Its evaluation record is dropped (it scored
other weights) and ``averaged_from`` names the checkpoints. Checkpoints of another run (other hyperparameters or
other adapter names) are refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from whisper_lora_pl.training.checkpoints import atomic_torch_save

#: hyperparameters that may differ between checkpoints of one run
_FREE = {"_instantiator"}


def average_checkpoints(paths: list[str | Path], out: str | Path) -> Path:
    """Write the checkpoint whose adapters are the mean of ``paths``' (the last one's everything else)."""
    if len(paths) < 2:
        raise ValueError("give at least two checkpoints to average")
    loaded = [torch.load(path, map_location="cpu", weights_only=True) for path in paths]
    last = loaded[-1]
    for path, checkpoint in zip(paths, loaded, strict=True):
        if checkpoint["state_dict"].keys() != last["state_dict"].keys():
            raise ValueError(f"{path} holds other adapter weights than {paths[-1]}: not a checkpoint of the same run")
        theirs, ours = ({k: v for k, v in c["hyper_parameters"].items() if k not in _FREE} for c in (checkpoint, last))
        if theirs != ours:
            differ = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
            raise ValueError(f"{path} was trained with other settings than {paths[-1]} ({', '.join(differ)})")
    averaged = dict(last)
    averaged["state_dict"] = {
        key: torch.stack([c["state_dict"][key].float() for c in loaded]).mean(0).to(value.dtype)
        for key, value in last["state_dict"].items()
    }
    averaged["evaluation"] = None  # the last checkpoint's validation scored other weights
    averaged["averaged_from"] = [str(path) for path in paths]
    atomic_torch_save(averaged, Path(out))
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the averaged checkpoint to write (.ckpt)")
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoints of one run, the last one last")
    args = parser.parse_args(argv)
    print(average_checkpoints(args.checkpoints, args.out))


if __name__ == "__main__":
    main()
