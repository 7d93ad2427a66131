"""What a training run left, built back the way it was trained: its facts (:class:`RunInfo`), its base (quantized as
in training, then dequantized) and its adapters on that base. Evaluation (``evaluate_merged``), export, deploy and
transcribe all build from here: the training system imports nothing from export, and deploy nothing from export.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import GenerationConfig, WhisperForConditionalGeneration, WhisperProcessor

from whisper_lora_pl.convert import resolve_model_name
from whisper_lora_pl.decode import DecodingSettings
from whisper_lora_pl.features import set_feature_context
from whisper_lora_pl.model import BaseDtype, EncoderLength, LoraSettings, Quantization, load_base

#: what an exported folder says about the run that made it (read by transcribe)
RUN_FILE = "whisper-lora-pl.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class RunInfo:
    """The facts decoding needs from the training run, carried from the checkpoint into exported folders."""

    model_name: str
    quantization: Quantization = "none"
    base_dtype: BaseDtype = "float32"
    context_seconds: float = 30.0
    encoder_length: EncoderLength = "padded"
    encoder_min_seconds: float = 0.0
    language: str | None = None
    task: str | None = None
    num_beams: int = 1
    max_new_tokens: int = 448
    decoding: DecodingSettings = field(default_factory=DecodingSettings)
    #: the run trained on timestamp labels (``data.timestamp_share`` above 0): the model can time its own segments
    timestamps: bool = False

    @classmethod
    def from_hparams(cls, hparams: dict) -> RunInfo:
        decoding = hparams.get("decoding") or {}
        return cls(
            model_name=hparams["model_name"],
            quantization=hparams.get("quantization", "none"),
            base_dtype=hparams.get("base_dtype", "float32"),
            context_seconds=hparams.get("context_seconds", 30.0),
            encoder_length=hparams.get("encoder_length", "padded"),
            encoder_min_seconds=hparams.get("encoder_min_seconds", 0.0),
            language=hparams.get("language"),
            task=hparams.get("task"),
            num_beams=hparams.get("num_beams", 1),
            max_new_tokens=hparams.get("max_new_tokens", 448),
            decoding=DecodingSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in decoding.items()}),
            timestamps=hparams.get("timestamps", False),
        )

    @classmethod
    def read(cls, folder: str | Path) -> RunInfo | None:
        path = Path(folder) / RUN_FILE
        if not path.is_file():
            return None
        return cls.from_hparams(json.loads(path.read_text(encoding="utf-8")))

    def write(self, folder: Path) -> None:
        (folder / RUN_FILE).write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def generation_config(self, base: GenerationConfig) -> GenerationConfig:
        """The base's generation config with the evaluated prompt and search written in: ``transformers.pipeline``
        then decodes like the evaluation (it would otherwise detect the language and search 5 beams)."""
        config = GenerationConfig.from_dict(base.to_dict())
        if self.language:
            config.language = self.language
            config.task = self.task or "transcribe"
        config.return_timestamps = False
        config.num_beams = self.num_beams
        config.max_new_tokens = self.max_new_tokens
        config.max_length = None  # beside max_new_tokens it would only make transformers warn at every call
        return config


def trained_base(info: RunInfo, device: torch.device | str = "cpu") -> WhisperForConditionalGeneration:
    """The base as the adapters saw it in training (quantized or in ``base_dtype``, with the trained encoder
    context and length), then in float32: dequantized, or cast (exact from bfloat16 / float16)."""
    base = load_base(
        info.model_name,
        info.quantization,
        device,
        info.context_seconds,
        info.base_dtype,
        info.encoder_length,
        info.encoder_min_seconds,
    )
    base = base.dequantize(dtype=torch.float32) if info.quantization != "none" else base.float()
    return base.eval()


def with_adapters(
    info: RunInfo, lora: LoraSettings, adapters: dict[str, torch.Tensor], device: torch.device | str, source: str
) -> PeftModel:
    """``adapters`` (named as in the training PeftModel) on :func:`trained_base`: what export merges, and what
    evaluation decodes with (``WhisperLoRA``'s ``evaluate_merged``)."""
    model = get_peft_model(trained_base(info, device), lora.peft_config())
    expected = {name for name, param in model.named_parameters() if param.requires_grad}
    if missing := expected - adapters.keys():
        raise KeyError(f"{source} lacks {len(missing)} adapter weights, e.g. {sorted(missing)[:3]}")
    model.load_state_dict(adapters, strict=False)
    return model.eval()


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[PeftModel, RunInfo]:
    """The checkpoint's adapters on :func:`trained_base`, and what the run says about decoding."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    hparams = dict(checkpoint["hyper_parameters"])
    # a data setting, so not among the module's hyperparameters (LightningCLI re-applies those to its signature)
    info = RunInfo.from_hparams({**hparams, "timestamps": checkpoint.get("timestamps", False)})
    adapters = {key.removeprefix("model."): value for key, value in checkpoint["state_dict"].items()}
    return with_adapters(info, LoraSettings(**hparams["lora"]), adapters, device, str(path)), info


def processor_for(info: RunInfo) -> WhisperProcessor:
    processor = WhisperProcessor.from_pretrained(resolve_model_name(info.model_name))
    processor.tokenizer.set_prefix_tokens(language=info.language, task=info.task, predict_timestamps=False)
    set_feature_context(processor.feature_extractor, info.context_seconds)
    return processor
