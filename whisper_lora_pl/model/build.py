"""Build the quantized Whisper base with LoRA adapters: plain functions of the run's settings
(:class:`~whisper_lora_pl.model.settings.RunInfo`), testable without a Trainer, and the dynamic-length encoder."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from torch import nn
from transformers import BitsAndBytesConfig, WhisperForConditionalGeneration, WhisperModel
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from whisper_lora_pl.convert import resolve_model_name
from whisper_lora_pl.data.features import FRAMES_PER_SECOND, trim_to_longest
from whisper_lora_pl.model.settings import DTYPES, BaseDtype, EncoderLength, LoraSettings, Quantization, RunInfo

__all__ = [
    "DTYPES",
    "BaseDtype",
    "DynamicLengthEncoder",
    "DynamicWhisper",
    "EncoderLength",
    "LoraSettings",
    "Quantization",
    "build_whisper_lora",
    "count_parameters",
    "load_base",
    "load_whisper",
    "quantization_config",
    "set_context",
]

#: encoder positions per second of audio: 100 mel frames, halved by the second convolution
POSITIONS_PER_SECOND = 50


def _not_the_int8_cast_notice(record: logging.LogRecord) -> bool:
    """bitsandbytes logs on every int8 matmul that fp32 inputs are cast to fp16: expected, and it floods the log."""
    return not record.getMessage().startswith("MatMul8bitLt: inputs will be cast")


def quantization_config(quantization: Quantization, device: torch.device | str = "cpu") -> BitsAndBytesConfig | None:
    """``BitsAndBytesConfig`` for the choice (transformers 5 removed ``load_in_8bit=`` on ``from_pretrained``)."""
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=nf4_compute_dtype(device),
        )
    return None


def nf4_compute_dtype(device: torch.device | str) -> torch.dtype:
    """What 4-bit layers compute in: bfloat16 on a GPU that has it (Ampere and later), float16 on older GPUs
    (a T4, a V100), float32 on the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def load_base(info: RunInfo, device: torch.device | str = "cpu") -> WhisperForConditionalGeneration:
    """The run's base model (``info``: name, quantization, dtype, encoder context and length), quantized on
    ``device`` (explicit ``device_map``: ``"auto"`` would spread it and break DDP). ``base_dtype`` is the unquantized
    base's weight type (with int8/nf4 the layers that stay unquantized are float32)."""
    if info.quantization == "int8":
        bnb_log = logging.getLogger("bitsandbytes.autograd._functions")
        if _not_the_int8_cast_notice not in bnb_log.filters:
            bnb_log.addFilter(_not_the_int8_cast_notice)
    model = load_whisper(
        resolve_model_name(info.model_name),
        info.encoder_length,
        info.encoder_min_seconds,
        quantization_config=quantization_config(info.quantization, device),
        device_map={"": torch.device(device)},
        dtype=DTYPES[info.base_dtype] if info.quantization == "none" else torch.float32,
    )
    return set_context(model, info.context_seconds)


def load_whisper(
    folder: str, encoder_length: EncoderLength = "padded", encoder_min_seconds: float = 0.0, **kwargs
) -> WhisperForConditionalGeneration:
    """``from_pretrained`` of a Whisper folder, with the dynamic-length encoder when the run used it (built as the
    model is loaded: :class:`DynamicWhisper`); ``kwargs`` go to ``from_pretrained``."""
    if encoder_length == "padded":
        return WhisperForConditionalGeneration.from_pretrained(folder, **kwargs)
    model = DynamicWhisper.from_pretrained(folder, **kwargs)
    model.get_encoder().min_seconds = encoder_min_seconds
    return model


def set_context(model: WhisperForConditionalGeneration, seconds: float) -> WhisperForConditionalGeneration:
    """Whisper with an encoder context of ``seconds`` (30 = Whisper's own): the encoder's positions are fixed
    sinusoids whose first K rows do not depend on how many there are, so keeping K of them *is* Whisper with a
    K-frame context; the feature extractor must pad to the same length (``features.set_feature_context``)."""
    positions = round(seconds * POSITIONS_PER_SECOND)
    encoder = model.get_encoder()
    table = encoder.embed_positions
    if positions > table.num_embeddings:
        longest = table.num_embeddings // POSITIONS_PER_SECOND
        raise ValueError(f"context_seconds {seconds:g} is longer than the model's {longest} s")
    if positions < table.num_embeddings:
        weight = table.weight
        shorter = torch.nn.Embedding(positions, table.embedding_dim, device=weight.device, dtype=weight.dtype)
        shorter.weight.data.copy_(table.weight.data[:positions])
        shorter.requires_grad_(False)
        encoder.embed_positions = shorter
        encoder.max_source_positions = positions
        model.config.max_source_positions = positions
    return model


class DynamicLengthEncoder(WhisperEncoder):
    """Whisper's encoder for inputs of any even number of frames up to its context: T frames get the first T / 2
    of its fixed sinusoidal positions, as OpenAI's own code would if it did not insist on 30 s (icefall's and ESPnet's
    Whisper encoders do the same). transformers' ``forward`` refuses anything but the full window and adds all of its
    positions; at the full window this one computes exactly what it does, hidden states and attentions included
    (``output_hidden_states`` / ``output_attentions`` are recorded by transformers' own hooks, as for the stock
    encoder; a test compares both on the installed transformers).

    ``attention_mask`` (batch, frames), as the feature extractor returns it, says where each clip's frames end: the
    batch is then cut after its longest clip (:meth:`cut`). The frames kept are attended to whole, padding included,
    as Whisper was pretrained (the stock encoder ignores the mask)."""

    #: a batch is never cut below this many seconds (``model.encoder_min_seconds``)
    min_seconds: float = 0.0

    def cut(self, input_features: torch.Tensor, durations: Sequence[float]) -> torch.Tensor:
        """Full-window features cut to what this encoder takes for clips of ``durations`` seconds: after the longest,
        rounded up to a second, at least ``min_seconds``. Training and every decoding path call it."""
        return trim_to_longest(input_features, durations, minimum_seconds=self.min_seconds)

    @merge_with_config_defaults
    @capture_outputs
    def forward(self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        if attention_mask is not None:
            if attention_mask.shape[-1] != input_features.shape[-1]:
                raise ValueError(
                    f"attention_mask has {attention_mask.shape[-1]} frames, the features {input_features.shape[-1]}"
                )
            frames = attention_mask.sum(-1).float()
            input_features = self.cut(input_features, ((frames - 1).clamp(min=0) / FRAMES_PER_SECOND).tolist())
        frames = input_features.shape[-1]
        longest = self.embed_positions.num_embeddings * self.conv1.stride[0] * self.conv2.stride[0]
        if frames > longest or frames % 2:
            raise ValueError(f"the encoder takes an even number of mel frames up to {longest}, got {frames}")
        hidden = nn.functional.gelu(self.conv1(input_features))
        hidden = nn.functional.gelu(self.conv2(hidden)).permute(0, 2, 1)
        hidden = hidden + self.embed_positions.weight[: hidden.shape[1]]
        hidden = nn.functional.dropout(hidden, p=self.dropout, training=self.training)
        for layer in self.layers:
            if self.training and self.layerdrop > 0.0 and torch.rand([]) < self.layerdrop:
                continue  # LayerDrop, as the stock encoder (0 in every released Whisper)
            hidden = layer(hidden, None, **kwargs)
        return BaseModelOutput(last_hidden_state=self.layer_norm(hidden))


class _DynamicWhisperModel(WhisperModel):
    def __init__(self, config) -> None:
        super().__init__(config)
        self.encoder = DynamicLengthEncoder(config)
        self.post_init()


class DynamicWhisper(WhisperForConditionalGeneration):
    """``WhisperForConditionalGeneration`` whose encoder is a :class:`DynamicLengthEncoder` (``encoder_length:
    dynamic``): the same weights and the same folder on disk, saved as a stock Whisper (transformers and
    faster-whisper load it as such and decode at 30 s)."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.model = _DynamicWhisperModel(config)
        self.post_init()

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        super().save_pretrained(save_directory, *args, **kwargs)
        self.config.architectures = [WhisperForConditionalGeneration.__name__]
        self.config.save_pretrained(save_directory)  # transformers wrote this class's name


def build_whisper_lora(
    info: RunInfo,
    device: torch.device | str = "cpu",
    *,
    gradient_checkpointing: bool = True,
    reentrant_checkpointing: bool = False,
) -> PeftModel:
    """The run's base (:func:`load_base`), frozen and prepared for k-bit training, with trainable fp32 LoRA adapters
    (``info.lora``).

    Checkpointing is non-reentrant by default: peft passes ``{}``, which torch reads as reentrant, and reentrant
    checkpointing with no input hook leaves the encoder's LoRA weights without gradient, silently.
    ``reentrant_checkpointing`` opts into reentrant checkpointing with hooks on the encoder's and decoder's inputs
    (checked by a test): with bitsandbytes int8 it saves much more memory, because ``MatMul8bitLt`` keeps its
    quantized activations on ``ctx``, out of reach of the saved-tensor hooks non-reentrant checkpointing relies on.
    """
    model = load_base(info, device)
    # transformers' own SpecAugment draws from numpy's global generator: off; the module masks with its own
    # (``specaugment.SpecAugment``), whatever the base's config says
    model.config.apply_spec_augment = False
    if info.quantization == "none":  # peft's preparation would cast a bfloat16 / float16 base to float32
        model.requires_grad_(False)
    else:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)  # freeze, norms in fp32
    if gradient_checkpointing:
        model.config.use_cache = False
        kwargs = {"use_reentrant": reentrant_checkpointing}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.20 renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if reentrant_checkpointing:
            model.enable_input_require_grads()  # every sub-model's input: the decoder's embeddings, the encoder's conv1
    return get_peft_model(model, info.lora.peft_config())


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as packed bytes, like peft's own report."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
