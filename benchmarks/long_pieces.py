"""Long audio from a checkpoint, with and without pieces of the training clips' length: the eval sets' figures.

    python benchmarks/long_pieces.py --checkpoint runs/demo/checkpoints/last.ckpt
    python benchmarks/long_pieces.py --checkpoint runs/demo/checkpoints/last.ckpt --detect

``--detect`` decodes each long set twice as ``transcribe`` decodes it, with the set's language given and left to the
model (``--language auto``), with the run's routing of other languages (the base beside the adapters, as
``transcribe --checkpoint`` builds it): the long-form figures and the share of files detected in the set's language.

Decodes the demo's long sets (``configs/demo.yaml``'s ``data.eval_sets`` of kind ``long``) as ``transcribe`` does,
once cut only where a piece would pass 30 s (what ``transcribe`` did before ``--piece-seconds``) and once in pieces of
the checkpoint's recorded length, and prints each set's figures side by side (``whisper_lora_pl.training.evalrun``).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from whisper_lora_pl.data.evalsets import EvalSet, load_set
from whisper_lora_pl.model.merging import trained_base
from whisper_lora_pl.takehome.transcribe import decoder_for, load_model
from whisper_lora_pl.training.evalrun import evaluate_sets

REPO = Path(__file__).resolve().parent.parent
SHOWN = ("cer", "cue_cer", "cue_start_median", "cue_end_median", "cues_per_segment", "silence_chars")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--detect", action="store_true", help="the language given, then left to the model")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, processor, info = load_model(checkpoint=args.checkpoint)
    decoder = decoder_for(model, processor, info)
    specs = yaml.safe_load(Path(args.config).read_text())["data"]["eval_sets"]
    sets = [load_set(name, EvalSet(**spec), 30.0) for name, spec in specs.items() if spec.get("kind") == "long"]
    print(f"checkpoint: pieces of {info.piece_seconds} s of speech, files up to {info.whole_seconds} s whole\n")
    if args.detect:
        detect(sets, decoder, processor, info)
        return
    print("| set | pieces | " + " | ".join(SHOWN) + " | decode s |")
    print("|---" * (len(SHOWN) + 3) + "|")
    for label, pieces in (("up to 30 s", (None, 0.0)), ("training length", (info.piece_seconds, info.whole_seconds))):
        began = time.perf_counter()
        values = evaluate_sets(sets, decoder, processor.feature_extractor, "long", run_language=info.language,
                               batch_size=8, piece_seconds=pieces[0], whole_seconds=pieces[1])  # fmt: skip
        took = time.perf_counter() - began
        for loaded in sets:
            cells = [f"{values[f'long/{loaded.name}/{k}']:.3f}" for k in SHOWN]
            print(f"| {loaded.name} | {label} | " + " | ".join(cells) + f" | {took:.0f} (both sets) |")


def detect(sets, decoder, processor, info) -> None:
    """Each long set with its language given, then left to the model, routed as the run routes."""
    if info.decoding.other_languages == "base":
        decoder = replace(decoder, route=(trained_base(info), info.language))
    shown = (*SHOWN, "language_accuracy")
    print(f"routing: {info.decoding.other_languages}, detect_with: {info.decoding.detect_with}\n")
    print("| set | language | " + " | ".join(shown) + " | decode s |")
    print("|---" * (len(shown) + 3) + "|")
    for loaded in sets:
        for label, spec in (("given", loaded.spec), ("auto", replace(loaded.spec, detect_language=True))):
            began = time.perf_counter()
            values = evaluate_sets([replace(loaded, spec=spec)], decoder, processor.feature_extractor, "long",
                                   run_language=info.language, batch_size=8, piece_seconds=info.piece_seconds,
                                   whole_seconds=info.whole_seconds, long_timestamps=info.timestamps)  # fmt: skip
            took = time.perf_counter() - began
            cells = [f"{values.get(f'long/{loaded.name}/{k}', float('nan')):.3f}" for k in shown]
            print(f"| {loaded.name} | {label} | " + " | ".join(cells) + f" | {took:.0f} |", flush=True)


if __name__ == "__main__":
    main()
