"""What a training run left, built back the way it was trained from its settings (``settings.RunInfo``): its
base (quantized as in training, then dequantized) and its adapters on that base. Evaluation (``evaluate_merged``),
export, deploy and transcribe all build from here: the training system imports nothing from export, and deploy
nothing from export.
"""

from __future__ import annotations

import copy
from pathlib import Path

import bitsandbytes as bnb
import torch
from peft import PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import WhisperForConditionalGeneration, WhisperProcessor
from transformers.integrations.bitsandbytes import dequantize_bnb_weight

from whisper_lora_pl.convert import resolve_model_name
from whisper_lora_pl.data.features import set_feature_context
from whisper_lora_pl.model.build import load_base
from whisper_lora_pl.model.settings import RunInfo

#: bitsandbytes' quantized linear layers (int8, nf4)
QUANTIZED = (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)


def trained_base(info: RunInfo, device: torch.device | str = "cpu") -> WhisperForConditionalGeneration:
    """The base as the adapters saw it in training (quantized or in ``base_dtype``, with the trained encoder
    context and length), then in float32: dequantized, or cast (exact from bfloat16 / float16)."""
    base = load_base(info, device)
    base = base.dequantize(dtype=torch.float32) if info.quantization != "none" else base.float()
    return base.eval()


def with_adapters(
    info: RunInfo, adapters: dict[str, torch.Tensor], device: torch.device | str, source: str
) -> PeftModel:
    """``adapters`` (named as in the training PeftModel, shaped by ``info.lora``) on :func:`trained_base`: what
    export merges, and what ``load_checkpoint`` gives transcribe."""
    model = get_peft_model(trained_base(info, device), info.lora.peft_config())
    expected = {name for name, param in model.named_parameters() if param.requires_grad}
    if missing := expected - adapters.keys():
        raise KeyError(f"{source} lacks {len(missing)} adapter weights, e.g. {sorted(missing)[:3]}")
    model.load_state_dict(adapters, strict=False)
    return model.eval()


def merged_in_memory(
    model: PeftModel, dtype: torch.dtype = torch.float32, adapters: bool = True
) -> WhisperForConditionalGeneration:
    """The model export writes, built from the training model's own weights, with no reload from disk: each
    quantized weight dequantized as transformers' ``dequantize`` does, each adapter's update added in float32 as
    peft's ``merge_and_unload`` adds it (so, in float32, the very weights of :func:`with_adapters` +
    ``merge_and_unload``), then cast to ``dtype``. Weights already in ``dtype`` (the unquantized layers of an int8
    base in float32) are shared with the training model, not copied: the copy adds at most the base's size in
    ``dtype`` to the training model's memory. Evaluation (``evaluate_merged``) decodes with it. ``adapters=False``:
    the base alone, as the adapters saw it (what ``decoding.other_languages: base`` decodes other languages with)."""
    whisper = model.get_base_model()
    config = copy.deepcopy(whisper.config)
    for name in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, name):
            delattr(config, name)
    config.use_cache = True  # training with gradient checkpointing turned the cache off
    config.apply_spec_augment = False
    state: dict[str, torch.Tensor] = {}
    cast: dict[int, torch.Tensor] = {}  # tied weights (proj_out and embed_tokens) stay one tensor

    def put(key: str, tensor: torch.Tensor) -> None:
        if id(tensor) not in cast:
            cast[id(tensor)] = tensor.detach().to(dtype)
        state[key] = cast[id(tensor)]

    inside_lora: tuple[str, ...] = ()
    for name, module in whisper.named_modules():
        prefix = f"{name}." if name else ""
        if inside_lora and name.startswith(inside_lora):
            continue
        if isinstance(module, LoraLayer):
            inside_lora = tuple(f"{name}.{child}" for child, _ in module.named_children())
            base = module.get_base_layer()
            weight = _dense_weight(base)
            if not adapters:  # a copy: merging in place (peft's merge_and_unload) must not reach the base
                state[f"{prefix}weight"] = weight.to(dtype, copy=True)
                if base.bias is not None:
                    put(f"{prefix}bias", base.bias)
                continue
            for adapter in module.active_adapters:
                if adapter in module.lora_variant or module.lora_bias.get(adapter):
                    raise NotImplementedError("evaluate_merged merges plain LoRA only (no DoRA, no lora_bias)")
                weight = weight + module.get_delta_weight(adapter)
            state[f"{prefix}weight"] = weight.to(dtype)
            if base.bias is not None:
                put(f"{prefix}bias", base.bias)
            continue
        if isinstance(module, QUANTIZED):
            state[f"{prefix}weight"] = _dense_weight(module).to(dtype)
            if module.bias is not None:
                put(f"{prefix}bias", module.bias)
            continue
        for key, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            put(f"{prefix}{key}", tensor)
    with torch.device("meta"):
        merged = type(whisper)(config)  # a DynamicWhisper stays one (encoder_length: dynamic)
    merged.load_state_dict(state, strict=True, assign=True)
    merged.generation_config = copy.deepcopy(whisper.generation_config)
    if hasattr(encoder := whisper.get_encoder(), "min_seconds"):
        merged.get_encoder().min_seconds = encoder.min_seconds
    return merged.requires_grad_(False).eval()


def _dense_weight(layer: torch.nn.Module) -> torch.Tensor:
    """A linear layer's weight in float32: bitsandbytes' int8 / nf4 dequantized as transformers does."""
    weight = layer.weight
    if isinstance(layer, QUANTIZED):
        return dequantize_bnb_weight(weight, getattr(layer, "state", None)).to(torch.float32)
    return weight.detach().to(torch.float32)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[PeftModel, RunInfo]:
    """The checkpoint's adapters on :func:`trained_base`, and what the run says about decoding."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    hparams = dict(checkpoint["hyper_parameters"])
    # a data setting, so not among the module's hyperparameters (LightningCLI re-applies those to its signature)
    info = RunInfo.from_hparams(
        hparams
        | {key: checkpoint.get(key) for key in ("piece_seconds", "whole_seconds", "other_speech")}
        | {"timestamps": checkpoint.get("timestamps", False)}
    )
    adapters = {key.removeprefix("model."): value for key, value in checkpoint["state_dict"].items()}
    return with_adapters(info, adapters, device, str(path)), info


def processor_for(info: RunInfo) -> WhisperProcessor:
    processor = WhisperProcessor.from_pretrained(resolve_model_name(info.model_name))
    processor.tokenizer.set_prefix_tokens(language=info.language, task=info.task, predict_timestamps=False)
    set_feature_context(processor.feature_extractor, info.context_seconds)
    return processor
