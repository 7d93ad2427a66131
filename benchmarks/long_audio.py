"""Long audio and audio without speech: silero-vad against the energy split, through ``transcribe``'s code.

    python benchmarks/long_audio.py --checkpoint runs/demo/checkpoints/last.ckpt

Builds long files from the demo's held-out test clips (shuffled, ``--clips-per-file`` per file, pauses of 0.4-1.5 s
drawn at random, 0.5 s of silence at each end), clean and mixed with white noise at ``--snr`` dB (over the speech),
and transcribes them with each mode of ``--modes`` (``SPEECH:TIMESTAMPS``: ``vad:pauses`` cuts at the pauses silero-vad
finds, ``vad:model`` lets the model time its segments, for a run trained with ``data.timestamp_share``). Reports, per
mode and condition:
- long-form CER (all files' texts against their clips' sentences, the evaluation's normalisation);
- cue boundary error: each cue's start (end) against the nearest clip start (end), median and 90th percentile, s.
With ``--takehome`` (a ``--checkpoint`` trained with timestamps), the merged and CTranslate2 exports decode the same
files as their model cards say (``pipeline(return_timestamps=True)``, faster-whisper ``without_timestamps=False``):
their CER, cue count, how many cue texts equal transcribe's, and how far their cue times are from transcribe's.
Then non-speech audio (digital silence, loud white noise, 50 ms of noise, a chord, an arpeggio): characters of text
decoded as the evaluation decodes a clip (the whole file, what ``transcribe`` did before the detectors gated it),
and with each detector. Prints one Markdown table per part.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from whisper_lora_pl.data.audio import SAMPLING_RATE, load_audio
from whisper_lora_pl.data.features import log_mel
from whisper_lora_pl.decoding.text import ErrorRates
from whisper_lora_pl.takehome.transcribe import decoder_for, load_model, transcribe

REPO = Path(__file__).resolve().parent.parent
TEST_TSV = REPO / "data" / "demo-zh-CN" / "zh-CN" / "test.tsv"
RATE = SAMPLING_RATE


def long_files(folder: Path, per_file: int, snr: float, seed: int) -> dict[str, list[tuple[Path, list]]]:
    """``{"clean": [(path, [(start, end, sentence), ...]), ...], f"{snr} dB": [...]}``: the same files both ways."""
    rows = list(csv.DictReader(TEST_TSV.open(encoding="utf-8"), delimiter="\t"))
    rng = np.random.default_rng(seed)
    rng.shuffle(rows)
    built: dict[str, list] = {"clean": [], f"noise {snr:g} dB": []}
    for n in range(len(rows) // per_file):
        pieces, spans, t = [np.zeros(RATE // 2, np.float32)], [], 0.5
        for row in rows[n * per_file : (n + 1) * per_file]:
            wave = load_audio(TEST_TSV.parent / "clips" / row["path"])
            spans.append((t, t + len(wave) / RATE, row["sentence"]))
            pause = np.zeros(int(rng.uniform(0.4, 1.5) * RATE), np.float32)
            pieces += [wave, pause]
            t += (len(wave) + len(pause)) / RATE
        pieces.append(np.zeros(RATE // 2, np.float32))
        clean = np.concatenate(pieces)
        speech = np.concatenate([clean[int(a * RATE) : int(b * RATE)] for a, b, _ in spans])
        noise = rng.standard_normal(len(clean)).astype(np.float32)
        noise *= np.sqrt(np.mean(speech**2) / np.mean(noise**2) / 10 ** (snr / 10))
        noisy = clean + noise
        noisy /= max(1.0, float(np.abs(noisy).max()))
        for kind, wave in zip(built, (clean, noisy), strict=True):
            path = folder / f"{kind.split()[0]}-{n:02d}.wav"
            sf.write(path, wave, RATE, subtype="FLOAT")
            built[kind].append((path, spans))
    return built


def non_speech(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(1)
    t = np.arange(5 * RATE) / RATE
    notes = [262, 330, 392, 523]
    arpeggio = np.concatenate([0.3 * np.sin(2 * np.pi * f * t[: RATE // 2]) * np.hanning(RATE // 2) for f in notes])
    waves = {
        "silence 5 s": np.zeros(5 * RATE),
        "white noise 2 s": 0.5 * rng.standard_normal(2 * RATE),
        "noise 50 ms": 0.5 * rng.standard_normal(RATE // 20),
        "chord 5 s": sum(0.2 * np.sin(2 * np.pi * f * t) for f in notes[:3]),
        "arpeggio 5 s": np.tile(arpeggio, 3)[: 5 * RATE],
    }
    paths = {}
    for i, (name, wave) in enumerate(waves.items()):
        paths[name] = folder / f"nonspeech-{i}.wav"
        sf.write(paths[name], np.clip(wave, -1, 1).astype(np.float32), RATE, subtype="FLOAT")
    return paths


def boundary_errors(chunks: list[dict], spans: list) -> list[float]:
    starts = np.array([a for a, _, _ in spans])
    ends = np.array([b for _, b, _ in spans])
    errors = []
    for chunk in chunks:
        if chunk["text"]:
            errors += [float(np.abs(starts - chunk["start"]).min()), float(np.abs(ends - chunk["end"]).min())]
    return errors


def sentence_errors(chunks: list[dict], spans: list) -> list[float]:
    """For each sentence, the cue that overlaps it most: how far that cue's start and end are from the sentence's
    (a cue holding four sentences is off by their length; a missing cue counts the sentence's whole length)."""
    cues = [c for c in chunks if c["text"]]
    errors = []
    for start, end, _ in spans:
        overlap = [max(0.0, min(end, c["end"]) - max(start, c["start"])) for c in cues]
        if not cues or max(overlap) == 0:
            errors += [end - start, end - start]
            continue
        cue = cues[int(np.argmax(overlap))]
        errors += [abs(cue["start"] - start), abs(cue["end"] - end)]
    return errors


def cue_differences(ours: list[dict], theirs: list[tuple[float, float, str]]) -> tuple[int, list[float]]:
    """Cue texts equal to ours (in order), and |start| and |end| differences of each of our cues to the cue of
    theirs nearest in start."""
    same = sum(a["text"] == b[2] for a, b in zip(ours, theirs, strict=False))
    gaps = []
    for cue in ours:
        start, end, _ = min(theirs, key=lambda t: abs(t[0] - cue["start"]))
        gaps += [abs(start - cue["start"]), abs(end - cue["end"])]
    return same, gaps


def takehome(checkpoint: str, built: dict, decoder, extractor, folder: Path, greedy: bool = False) -> None:
    """The exported folders' long-form cues against transcribe's (``--timestamps model``), per condition: the
    merged folder's model-card code (``generate(return_segments=True)``, which loads the folder for each file) and
    its pipeline, the CTranslate2 folder's faster-whisper call. ``greedy``: no fallback to sampling anywhere (each
    runtime draws its own random numbers, which parts their texts wherever a window falls back)."""
    import faster_whisper
    from transformers import pipeline

    from whisper_lora_pl.takehome.deploy import faster_whisper_kwargs
    from whisper_lora_pl.takehome.export import RunInfo, export, long_form_code, long_form_kwargs

    written = export(Path(checkpoint), folder / "export", ("merged",), ctranslate2="float32")
    info = RunInfo.read(written["merged"])
    if greedy:
        info = replace(info, decoding=replace(info.decoding, temperatures=(0.0,)))
        decoder = replace(decoder, settings=replace(decoder.settings, temperatures=(0.0,)))
    asr = pipeline("automatic-speech-recognition", model=str(written["merged"]), device="cpu")
    runtime = faster_whisper.WhisperModel(str(written["ctranslate2"]), device="cpu", compute_type="float32")
    decoder = replace(decoder, timestamps=True)
    print("\n| audio | path | long-form CER | cues | cue texts = transcribe's | start/end vs transcribe's, "
          "median / max (s) | decode s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for kind, files in built.items():
        began = time.perf_counter()
        records = transcribe([p for p, _ in files], decoder, extractor).records
        took = {"transcribe --timestamps model": time.perf_counter() - began}
        cues = {"transcribe --timestamps model": [[(c["start"], c["end"], c["text"]) for c in r["chunks"]]
                                                  for r in records]}  # fmt: skip
        began = time.perf_counter()
        cues["pipeline(return_timestamps=True)"] = [
            [(*c["timestamp"], c["text"].strip()) for c in
             asr({"raw": load_audio(p), "sampling_rate": RATE}, return_timestamps=True,
                 generate_kwargs=long_form_kwargs(info))["chunks"]]
            for p, _ in files
        ]  # fmt: skip
        took["pipeline(return_timestamps=True)"] = time.perf_counter() - began
        began, card = time.perf_counter(), []
        for p, _ in files:
            scope = {"THIS_FOLDER": str(written["merged"]), "audio": load_audio(p)}
            exec(long_form_code(info), scope)  # the merged folder's model card, as a user runs it
            card.append(scope["cues"])
        cues["model card: generate(return_segments=True)"] = card
        took["model card: generate(return_segments=True)"] = time.perf_counter() - began
        began = time.perf_counter()
        cues["faster-whisper without_timestamps=False"] = [
            [(s.start, s.end, s.text.strip()) for s in
             runtime.transcribe(load_audio(p), **faster_whisper_kwargs(info, timestamps=True))[0]]
            for p, _ in files
        ]  # fmt: skip
        took["faster-whisper without_timestamps=False"] = time.perf_counter() - began
        for path_name, found in cues.items():
            rates = ErrorRates("zh", prefix="")
            rates.update(["".join(t for *_, t in f) for f in found], ["".join(s for *_, s in sp) for _, sp in files])
            same, gaps, total = 0, [], 0
            for record, theirs in zip(records, found, strict=True):
                equal, differences = cue_differences(record["chunks"], theirs) if theirs else (0, [])
                same, gaps, total = same + equal, gaps + differences, total + len(theirs)
            print(
                f"| {kind} | {path_name} | {rates.metrics.compute()['cer'].item():.3f} | {total} | {same} | "
                f"{np.median(gaps):.2f} / {max(gaps):.2f} | {took[path_name]:.1f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--model")
    parser.add_argument("--adapter")
    parser.add_argument("--clips-per-file", type=int, default=8)
    parser.add_argument("--snr", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-segment", type=float)
    parser.add_argument("--modes", nargs="+", default=["energy:pauses", "vad:pauses"], help="SPEECH:TIMESTAMPS")
    parser.add_argument("--no-nonspeech", action="store_true", help="skip the table of audio without speech")
    parser.add_argument(
        "--takehome", action="store_true", help="also the merged and CTranslate2 exports' cues (needs --checkpoint)"
    )
    parser.add_argument("--greedy", action="store_true", help="--takehome without the loop guard's sampling")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, processor, info = load_model(args.model, args.adapter, args.checkpoint)
    decoder = decoder_for(model, processor, info)
    extractor = processor.feature_extractor
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        built = long_files(folder, args.clips_per_file, args.snr, args.seed)
        count = len(next(iter(built.values())))
        seconds = sum(sf.info(p).duration for p, _ in next(iter(built.values())))
        print(f"\n{count} long files ({seconds:.0f} s in all) of {args.clips_per_file} held-out clips each\n")
        clips = sum(len(spans) for _, spans in next(iter(built.values())))
        print(f"| audio | speech:timestamps | long-form CER | cues ({clips} sentences) | boundary error median / p90 "
              "(s) | per-sentence cue error median / p90 (s) | decode s |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for kind, files in built.items():
            for mode in args.modes:
                speech, timestamps = mode.split(":")
                decoder.timestamps = timestamps == "model"
                began = time.perf_counter()
                result = transcribe([p for p, _ in files], decoder, extractor, max_segment=args.max_segment,
                                    speech=speech)  # fmt: skip
                took = time.perf_counter() - began
                rates = ErrorRates("zh", prefix="")
                rates.update([r["text"] for r in result.records], ["".join(s for *_, s in sp) for _, sp in files])
                cer = rates.metrics.compute()["cer"].item()
                errors = [e for r, (_, sp) in zip(result.records, files, strict=True) for e in
                          boundary_errors(r["chunks"], sp)]  # fmt: skip
                cues = sum(len(r["chunks"]) for r in result.records)
                per = [e for r, (_, sp) in zip(result.records, files, strict=True) for e in
                       sentence_errors(r["chunks"], sp)]  # fmt: skip
                print(
                    f"| {kind} | {mode} | {cer:.3f} | {cues} | {np.median(errors):.2f} / "
                    f"{np.quantile(errors, 0.9):.2f} | {np.median(per):.2f} / {np.quantile(per, 0.9):.2f} | "
                    f"{took:.1f} |"
                )
        decoder.timestamps = False
        if args.takehome:
            takehome(args.checkpoint, built, decoder, extractor, folder, args.greedy)
        if args.no_nonspeech:
            return
        print("\n| audio | characters: whole file decoded | energy | vad |")
        print("|---|---|---|---|")
        for name, path in non_speech(folder).items():
            features = torch.from_numpy(log_mel(extractor, load_audio(path))[None])
            (whole,) = decoder(features, [sf.info(path).duration])
            gated = {}
            for speech in ("energy", "vad"):
                (record,) = transcribe([path], decoder, extractor, speech=speech).records
                gated[speech] = record["text"]
            print(
                f"| {name} | {len(whole.text.strip())} `{whole.text.strip()}` | {len(gated['energy'])} "
                f"`{gated['energy']}` | {len(gated['vad'])} `{gated['vad']}` |"
            )


if __name__ == "__main__":
    main()
