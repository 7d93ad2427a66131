"""A local web page to hear what a fine-tuned model does: upload or record audio, read the text and segments.

Upload a file or record one, read the text and the segments with their times, download SRT and JSON.

    python -m whisper_lora_pl.app --model exported/merged
    python -m whisper_lora_pl.app --adapter exported/adapter
    python -m whisper_lora_pl.app --checkpoint runs/demo/checkpoints/last.ckpt

It decodes through ``transcribe``'s code (the model loading, the evaluation's decoder, the cut of long audio), so a
file gets the text the command line writes for it. The page listens on 127.0.0.1 (``--host 0.0.0.0`` to share it
on a network); a file that cannot be read gets its reason in the page and the server goes on. Needs the ``app``
extra (``pip install -e '.[app]'``: Gradio).
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports below: bitsandbytes logs a notice when peft imports it
    from whisper_lora_pl.console import quiet_libraries

    quiet_libraries()

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from whisper_lora_pl.data.segments import Detector
from whisper_lora_pl.decoding.decode import Decoder
from whisper_lora_pl.takehome.transcribe import decoder_from_args, model_arguments, srt, transcribe

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline, and nothing leaves the machine


@dataclass
class Result:
    """What the page shows for one file: the text, the segment rows, a status line and the files to download."""

    text: str
    rows: list[list]
    status: str
    downloads: list[str]


class Transcriber:
    """One file at a time through ``transcribe.transcribe``; results written under ``folder`` for download."""

    def __init__(
        self,
        decoder: Decoder,
        feature_extractor,
        folder: Path,
        batch_size: int = 8,
        max_segment: float | None = None,
        speech: Detector = "vad",
        piece_seconds: float | None = None,
        whole_seconds: float = 0.0,
    ) -> None:
        self.decoder, self.feature_extractor = decoder, feature_extractor
        self.folder, self.batch_size, self.max_segment, self.speech = folder, batch_size, max_segment, speech
        self.piece_seconds, self.whole_seconds = piece_seconds, whole_seconds
        self.count = 0

    def __call__(self, path: str | None) -> Result:
        if not path:
            return Result("", [], "Upload a file or record from the microphone, then press Transcribe.", [])
        began = time.perf_counter()
        result = transcribe(
            [Path(path)],
            self.decoder,
            self.feature_extractor,
            self.batch_size,
            self.max_segment,
            speech=self.speech,
            piece_seconds=self.piece_seconds,
            whole_seconds=self.whole_seconds,
        )
        name = Path(path).name
        if result.failed:
            error = next(iter(result.failed.values()))
            return Result("", [], f"Error: could not transcribe {name}: {error.replace(str(path), name)}", [])
        record = result.records[0]
        self.count += 1
        stem = Path(path).stem
        out = self.folder / f"{self.count}"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.srt").write_text(srt(record["chunks"]), encoding="utf-8")
        (out / f"{stem}.json").write_text(
            json.dumps({**record, "path": name}, ensure_ascii=False, indent=1), encoding="utf-8"
        )
        rows = [[c["start"], c["end"], c["text"]] for c in record["chunks"] if c["text"]]
        looped = " A segment looped and was cut at its token budget." if record["looped"] else ""
        status = (
            f"{record['duration']:.1f} s of audio, {len(rows)} segment(s), decoded in "
            f"{time.perf_counter() - began:.1f} s.{looped}"
        )
        if not record["text"]:
            status += " No speech was recognised."
        return Result(record["text"], rows, status, [str(out / f"{stem}.srt"), str(out / f"{stem}.json")])


def build(transcriber: Transcriber, title: str):
    """The page: audio in, text, segments, status and downloads out."""
    import gradio as gr

    def run(path: str | None, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio's injection idiom)
        result = transcriber(path)
        return result.text, result.rows, result.status, result.downloads or None

    with gr.Blocks(title=title) as page:
        gr.Markdown(f"# {title}")
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio", elem_id="audio")
                button = gr.Button("Transcribe", variant="primary", elem_id="transcribe")
            with gr.Column():
                text = gr.Textbox(label="Text", lines=4, elem_id="text", buttons=["copy"])
                status = gr.Markdown(elem_id="status")
        segments = gr.Dataframe(
            headers=["start (s)", "end (s)", "text"],
            datatype=["number", "number", "str"],
            label="Segments",
            elem_id="segments",
        )
        downloads = gr.File(label="SRT and JSON", file_count="multiple", elem_id="downloads")
        button.click(run, inputs=audio, outputs=[text, segments, status, downloads])
    return page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every network)")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        parser.exit(2, "the web page needs Gradio: pip install -e '.[app]'\n")
    decoder, processor = decoder_from_args(parser, args)
    with tempfile.TemporaryDirectory(prefix="whisper-lora-app-") as folder:
        transcriber = Transcriber(
            decoder,
            processor.feature_extractor,
            Path(folder),
            args.batch_size,
            args.max_segment,
            args.speech,
            args.piece_seconds or None,
            args.whole_seconds,
        )
        source = args.model or args.adapter or args.checkpoint
        page = build(transcriber, f"whisper-lora-pl: {Path(source).name}")
        page.queue(default_concurrency_limit=1)  # one model: one transcription at a time, the others wait in line
        page.launch(server_name=args.host, server_port=args.port, ssr_mode=False, allowed_paths=[folder])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
