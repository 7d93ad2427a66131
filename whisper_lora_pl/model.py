"""Build the quantized Whisper base with LoRA adapters: a plain function, testable without a Trainer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from torch import nn
from transformers import BitsAndBytesConfig, WhisperForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from whisper_lora_pl.convert import resolve_model_name
from whisper_lora_pl.features import trim_to_longest

Quantization = Literal["int8", "nf4", "none"]
BaseDtype = Literal["float32", "bfloat16", "float16"]
EncoderLength = Literal["padded", "dynamic"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: encoder positions per second of audio: 100 mel frames, halved by the second convolution
POSITIONS_PER_SECOND = 50


def _not_the_int8_cast_notice(record: logging.LogRecord) -> bool:
    """bitsandbytes logs on every int8 matmul that fp32 inputs are cast to fp16: expected, and it floods the log."""
    return not record.getMessage().startswith("MatMul8bitLt: inputs will be cast")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyperparameters (the tutorial's: r=8, alpha=64, dropout 0.05 on q_proj and v_proj).

    Args:
        r: rank of the update matrices.
        alpha: scaling numerator (the update is scaled by alpha / r).
        dropout: dropout on the LoRA input.
        target_modules: names of the linear layers that get adapters.
        bias: which biases train: ``none``, ``all`` or ``lora_only``.
    """

    r: int = 8
    alpha: int = 64
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    bias: Literal["none", "all", "lora_only"] = "none"

    def peft_config(self) -> LoraConfig:
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias=self.bias,
        )


@dataclass(frozen=True)
class SpecAugment:
    """SpecAugment of the training log-mel through transformers' own masks (``WhisperModel._mask_input_features``,
    training mode only), drawn over each clip's frames, never over its padding (all off by default).

    Args:
        mask_time_prob: about this share of a clip's frames is masked, in spans of ``mask_time_length`` frames
            (10 ms each); 0: no time masks.
        mask_time_length: frames per time mask.
        mask_time_min_masks: time masks per clip at least, when ``mask_time_prob`` is above 0.
        mask_feature_prob: about this share of the mel bins is masked, in bands of ``mask_feature_length``.
        mask_feature_length: mel bins per frequency mask.
        mask_feature_min_masks: frequency masks per clip at least, when ``mask_feature_prob`` is above 0.
    """

    mask_time_prob: float = 0.0
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0

    @property
    def active(self) -> bool:
        return self.mask_time_prob > 0 or self.mask_feature_prob > 0

    def configure(self, model: torch.nn.Module) -> None:
        """Set the masks on ``model``'s config (transformers reads them there in every training forward)."""
        if not (0 <= self.mask_time_prob <= 1 and 0 <= self.mask_feature_prob <= 1):
            raise ValueError("model.spec_augment's mask_time_prob and mask_feature_prob must be in [0, 1]")
        config = model.config
        config.apply_spec_augment = self.active
        for name, value in asdict(self).items():
            setattr(config, name, value)


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


def load_base(
    model_name: str,
    quantization: Quantization = "int8",
    device: torch.device | str = "cpu",
    context_seconds: float = 30.0,
    base_dtype: BaseDtype = "float32",
    encoder_length: EncoderLength = "padded",
    encoder_min_seconds: float = 0.0,
) -> WhisperForConditionalGeneration:
    """The base model, quantized on ``device`` (explicit ``device_map``: ``"auto"`` would spread it and break DDP),
    with an encoder context of ``context_seconds``, padded or of any length up to it (``encoder_length``).
    ``base_dtype`` is the unquantized base's weight type (with int8/nf4 the layers that stay unquantized are
    float32)."""
    if quantization == "int8":
        bnb_log = logging.getLogger("bitsandbytes.autograd._functions")
        if _not_the_int8_cast_notice not in bnb_log.filters:
            bnb_log.addFilter(_not_the_int8_cast_notice)
    model = WhisperForConditionalGeneration.from_pretrained(
        resolve_model_name(model_name),
        quantization_config=quantization_config(quantization, device),
        device_map={"": torch.device(device)},
        dtype=DTYPES[base_dtype] if quantization == "none" else torch.float32,
    )
    model = set_context(model, context_seconds)
    return make_dynamic(model, encoder_min_seconds) if encoder_length == "dynamic" else model


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
    positions; at the full window this one computes exactly what it does (a test compares them)."""

    #: a batch is never cut below this many seconds (set by :func:`make_dynamic`)
    min_seconds: float = 0.0

    def cut(self, input_features: torch.Tensor, durations: Sequence[float]) -> torch.Tensor:
        """Full-window features cut to what this encoder takes for clips of ``durations`` seconds: after the longest,
        rounded up to a second, at least ``min_seconds``. Training and every decoding path call it."""
        return trim_to_longest(input_features, durations, minimum_seconds=self.min_seconds)

    def forward(self, input_features: torch.Tensor, attention_mask=None, **kwargs) -> BaseModelOutput:
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


def make_dynamic(model: WhisperForConditionalGeneration, min_seconds: float = 0.0) -> WhisperForConditionalGeneration:
    """Let ``model``'s encoder take batches padded to their longest clip (at least ``min_seconds``) instead of to
    the full window (the same module and weights, another ``forward``; the checkpoint and the exported folder do
    not change)."""
    encoder = model.get_encoder()
    if not isinstance(encoder, DynamicLengthEncoder):
        encoder.__class__ = DynamicLengthEncoder
    encoder.min_seconds = min_seconds
    return model


def build_whisper_lora(
    model_name: str,
    quantization: Quantization = "int8",
    lora: LoraSettings = LoraSettings(),
    device: torch.device | str = "cpu",
    gradient_checkpointing: bool = True,
    reentrant_checkpointing: bool = False,
    context_seconds: float = 30.0,
    base_dtype: BaseDtype = "float32",
    encoder_length: EncoderLength = "padded",
    encoder_min_seconds: float = 0.0,
) -> PeftModel:
    """Quantized base, frozen and prepared for k-bit training, with trainable fp32 LoRA adapters.

    Checkpointing is non-reentrant by default: peft passes ``{}``, which torch reads as reentrant, and reentrant
    checkpointing with no input hook leaves the encoder's LoRA weights without gradient, silently.
    ``reentrant_checkpointing`` opts into reentrant checkpointing with hooks on the encoder's and decoder's inputs
    (checked by a test): with bitsandbytes int8 it saves much more memory, because ``MatMul8bitLt`` keeps its
    quantized activations on ``ctx``, out of reach of the saved-tensor hooks non-reentrant checkpointing relies on.
    """
    model = load_base(
        model_name, quantization, device, context_seconds, base_dtype, encoder_length, encoder_min_seconds
    )
    if quantization == "none":  # peft's preparation would cast a bfloat16 / float16 base to float32
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
    return get_peft_model(model, lora.peft_config())


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as packed bytes, like peft's own report."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
