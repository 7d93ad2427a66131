"""Turn a training checkpoint into what users take home: a PEFT adapter folder and a merged Whisper folder.

    python -m whisper_lora_pl.export runs/demo/checkpoints/last.ckpt exported/

writes ``exported/adapter`` (``PeftModel.from_pretrained(base, folder)`` loads it: the tutorial's inference code
works unchanged) and ``exported/merged`` (a standalone Whisper that ``transformers.pipeline`` loads), each with
the processor beside it. The checkpoint alone is enough: its hyperparameters name the base model and the LoRA
settings. Merging happens on a full-precision base (a quantized base cannot absorb the update exactly).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from peft import PeftModel
from transformers import WhisperProcessor

from whisper_lora_pl.convert import resolve_model_name
from whisper_lora_pl.model import LoraSettings, Quantization, build_whisper_lora


def load_checkpoint(
    path: str | Path, quantization: Quantization = "none", device: str = "cpu"
) -> tuple[PeftModel, dict]:
    """The base named in the checkpoint, built at ``quantization``, with the checkpoint's adapters loaded."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    hparams = dict(checkpoint["hyper_parameters"])
    model = build_whisper_lora(
        hparams["model_name"], quantization, LoraSettings(**hparams["lora"]), device, gradient_checkpointing=False
    )
    adapters = {key.removeprefix("model."): value for key, value in checkpoint["state_dict"].items()}
    expected = {name for name, param in model.named_parameters() if param.requires_grad}
    if missing := expected - adapters.keys():
        raise KeyError(f"{path} lacks {len(missing)} adapter weights, e.g. {sorted(missing)[:3]}")
    model.load_state_dict(adapters, strict=False)
    return model.eval(), hparams


def processor_for(hparams: dict) -> WhisperProcessor:
    processor = WhisperProcessor.from_pretrained(resolve_model_name(hparams["model_name"]))
    processor.tokenizer.set_prefix_tokens(language=hparams.get("language"), task=hparams.get("task"))
    return processor


def export(checkpoint: str | Path, out: str | Path, parts: tuple[str, ...] = ("adapter", "merged")) -> dict[str, Path]:
    """Write ``out/adapter`` (adapter_config.json, adapter_model.safetensors) and/or ``out/merged`` (a plain
    ``WhisperForConditionalGeneration`` defaulting to the trained language), each with the processor."""
    model, hparams = load_checkpoint(checkpoint)
    processor = processor_for(hparams)
    written = {}
    if "adapter" in parts:
        written["adapter"] = Path(out) / "adapter"
        model.save_pretrained(written["adapter"])
        processor.save_pretrained(written["adapter"])
    if "merged" in parts:  # last: merging folds the adapters into the base in place
        merged = model.merge_and_unload()
        if hparams.get("language"):  # so that pipeline(...) transcribes the trained language without generate_kwargs
            merged.generation_config.language = hparams["language"]
            merged.generation_config.task = hparams.get("task") or "transcribe"
        written["merged"] = Path(out) / "merged"
        merged.save_pretrained(written["merged"])
        processor.save_pretrained(written["merged"])
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a .ckpt written by `train.py fit`")
    parser.add_argument("out", type=Path, help="folder that receives adapter/ and merged/")
    parser.add_argument("--only", choices=["adapter", "merged"], help="write just one of the two")
    args = parser.parse_args(argv)
    for part, folder in export(args.checkpoint, args.out, (args.only,) if args.only else ("adapter", "merged")).items():
        print(f"{part}: {folder}")


if __name__ == "__main__":
    main()
