"""A CTranslate2 folder for faster-whisper, from the merged model that export writes.

Most Whisper deployments run on faster-whisper, and converting a LoRA fine-tune is where they break (a PeftModel
does not convert; a folder without the tokenizer or with the wrong mel count transcribes gibberish). Here the
merged weights (the dequantized training base with the adapters folded in) go through CTranslate2's own
Transformers converter, with ``tokenizer.json`` and a ``preprocessor_config.json`` beside them: transformers 5
saves the feature extractor inside ``processor_config.json``, and faster-whisper reads the mel count (80, or 128
for large-v3) from ``preprocessor_config.json`` only. Needs the ``deploy`` extra: ``pip install -e '.[deploy]'``.
"""

from __future__ import annotations

from pathlib import Path

from transformers import WhisperConfig, WhisperFeatureExtractor

from whisper_lora_pl.decoding.decode import WINDOW_SECONDS
from whisper_lora_pl.model.build import POSITIONS_PER_SECOND
from whisper_lora_pl.model.settings import RunInfo


def check_context(context_seconds: float) -> None:
    """faster-whisper pads every window to 30 s (3,000 frames) whatever its preprocessor config says, and
    CTranslate2 refuses more frames than the encoder has positions for. Converted with Whisper's 30 s of positions
    instead, the demo's 15 s model decoded worse than its evaluation (CER 0.588 against 0.532): no conversion."""
    if context_seconds < WINDOW_SECONDS:
        raise ValueError(
            f"this model was trained with a {context_seconds:g} s encoder context, which faster-whisper cannot run "
            "(it pads every window to 30 s; converted at 30 s, the demo's 15 s model scored CER 0.588 against its "
            "evaluation's 0.532). For faster-whisper, train with model.context_seconds: 30; to use this model, "
            "transcribe with python -m whisper_lora_pl.transcribe or transformers.pipeline on OUT/merged"
        )


def to_ctranslate2(merged: str | Path, out: str | Path, quantization: str = "int8") -> Path:
    """Convert an exported merged folder into ``out``, which ``faster_whisper.WhisperModel(out)`` loads as is."""
    merged, out = Path(merged), Path(out)
    config = WhisperConfig.from_pretrained(merged)
    check_context(config.max_source_positions / POSITIONS_PER_SECOND)
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError as err:
        raise ImportError("the CTranslate2 export needs the deploy extra: pip install -e '.[deploy]'") from err
    TransformersConverter(str(merged), copy_files=["tokenizer.json"]).convert(
        str(out), quantization=quantization, force=True
    )
    WhisperFeatureExtractor.from_pretrained(merged).save_pretrained(out)  # preprocessor_config.json
    info = RunInfo.read(merged)
    if info is not None:
        info.write(out)
        (out / "README.md").write_text(model_card(info, quantization), encoding="utf-8")
    return out


def faster_whisper_kwargs(info: RunInfo, timestamps: bool = False) -> dict:
    """``WhisperModel.transcribe`` arguments that decode as the evaluation did: the trained language and task, no
    timestamp tokens, the same search and loop guard, and none of faster-whisper's other defaults that re-decode
    or drop clips (its log-probability and no-speech thresholds, conditioning on the previous text). With
    ``timestamps`` (a run trained on timestamp labels), segments timed by the model, as ``transcribe --timestamps
    model`` times them."""
    d = info.decoding
    return {
        "language": info.language,
        "task": info.task or "transcribe",
        "beam_size": info.num_beams,
        "without_timestamps": not timestamps,
        "condition_on_previous_text": False,
        "temperature": list(d.temperatures),
        "compression_ratio_threshold": d.compression_ratio_threshold,
        "log_prob_threshold": d.logprob_threshold,
        "no_speech_threshold": None,
    }


def model_card(info: RunInfo, quantization: str) -> str:
    kwargs = ", ".join(f"{k}={v!r}" for k, v in faster_whisper_kwargs(info).items())
    return "\n".join(
        [
            "# Whisper fine-tuned with LoRA (CTranslate2, for faster-whisper)",
            "",
            f"- base model: `{info.model_name}` (trained on a `{info.quantization}` base), weights: `{quantization}`",
            f"- language: `{info.language}`, task: `{info.task}`, no timestamp tokens",
            "",
            "Transcribe as the evaluation decoded:",
            "",
            "```python",
            "from faster_whisper import WhisperModel",
            "",
            f'model = WhisperModel("THIS_FOLDER", compute_type="{quantization}")',
            f"segments, info = model.transcribe(AUDIO, {kwargs})",
            'text = "".join(segment.text for segment in segments)',
            "```",
            "",
            *(
                [
                    "The run also trained on timestamp labels: `without_timestamps=False` gives segments timed by the "
                    "model (the cues `transcribe --timestamps model` writes), for long audio and subtitles.",
                    "",
                ]
                if info.timestamps
                else []
            ),
        ]
    )
