"""What a run is, in one frozen object (:class:`RunInfo`): the base (name, quantization, dtype, encoder context and
length), the adapters (:class:`LoraSettings`) and how it decodes. Building the model (``model.load_base``,
``build_whisper_lora``), the base as trained (``merging.trained_base``), export and transcribe all take it; the
LightningModule makes it from its hyperparameters, checkpoints and exported folders carry it."""

from __future__ import annotations

import json
from dataclasses import KW_ONLY, asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig
from transformers import GenerationConfig

from whisper_lora_pl.decoding.decode import DecodingSettings

Quantization = Literal["int8", "nf4", "none"]
BaseDtype = Literal["float32", "bfloat16", "float16"]
EncoderLength = Literal["padded", "dynamic"]
#: the names configs and command lines use for weight types
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: what an exported folder says about the run that made it (read by transcribe)
RUN_FILE = "whisper-lora-pl.json"


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
class RunInfo:
    """A training run's model and decoding, carried from the module's hyperparameters into checkpoints and
    exported folders. Everything after ``model_name`` is keyword-only: two swapped values cannot pass silently."""

    model_name: str
    _: KW_ONLY
    quantization: Quantization = "none"
    base_dtype: BaseDtype = "float32"
    context_seconds: float = 30.0
    encoder_length: EncoderLength = "padded"
    encoder_min_seconds: float = 0.0
    lora: LoraSettings = field(default_factory=LoraSettings)
    language: str | None = None
    task: str | None = None
    num_beams: int = 1
    max_new_tokens: int = 448
    decoding: DecodingSettings = field(default_factory=DecodingSettings)
    #: the run trained on timestamp labels (``data.timestamp_share`` above 0): the model can time its own segments
    timestamps: bool = False
    #: the median duration of the clips the run trained on (None when unknown): long audio is cut into pieces of
    #: about this much speech, at pauses, unless the run decodes with timestamps (``segments.at_pauses``)
    piece_seconds: float | None = None
    #: the longest clip the run trained on: a file no longer than this is decoded whole, as an evaluation clip
    whole_seconds: float = 0.0
    #: clips of other speech an epoch held, per language (``data.other_speech``): speech the adapters learned to
    #: leave as the base had it, which the merged weights keep with no base beside them
    other_speech: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_hparams(cls, hparams: dict) -> RunInfo:
        """From a module's hyperparameters (or a run file): the values it names, the defaults for the others."""
        known = {f.name for f in fields(cls)} - {"_"}
        values = {key: value for key, value in hparams.items() if key in known and value is not None}
        if isinstance(values.get("lora"), dict):
            values["lora"] = LoraSettings(**_tuples(values["lora"]))
        if isinstance(values.get("decoding"), dict):
            values["decoding"] = DecodingSettings(**_tuples(values["decoding"]))
        return cls(**values)

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


def _tuples(values: dict) -> dict:
    """JSON and YAML give lists where the frozen settings hold tuples."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
