"""The evaluation sets of ``data.eval_sets``, decoded and scored at the end of a validation or test pass.

Each set is decoded with the pass's decoder (the merged copy when ``evaluate_merged``: what users take home), in the
set's language or, with ``detect_language``, the language the model detects. Clip sets are scored as the validation
split is; long sets go through ``longform.transcribe``, the code ``transcribe`` runs (silero-vad, the run's pieces or
its timestamp windows, cues as the SRT shows them), and are scored by ``longscore``. Each rank
decodes every ``world``-th clip or file; the CERs are torchmetrics (exact under DDP), the rest is gathered.
Metrics: ``<stage>/<name>/cer``, ``wer``, ``clips`` (or ``files``), ``skipped``, ``looped``, ``language_accuracy``
(with ``detect_language``); long sets add ``cue_cer`` (each segment against the text of the cues placed on it),
``cue_start_median``, ``cue_start_p90``, ``cue_end_median``, ``cue_end_p90`` (seconds), ``cues_per_segment`` and
``silence_chars``. Each set's per-clip (per-file) records go to ``predictions/<name>-<when>.jsonl``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import jiwer
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from tqdm.auto import tqdm

from whisper_lora_pl.data.audio import SAMPLING_RATE, AudioError, load_audio
from whisper_lora_pl.data.evalsets import LoadedSet
from whisper_lora_pl.data.features import log_mel
from whisper_lora_pl.decoding import cues
from whisper_lora_pl.decoding.decode import Decoder
from whisper_lora_pl.decoding.longform import transcribe
from whisper_lora_pl.decoding.longscore import score_cues
from whisper_lora_pl.decoding.text import CHINESE, ErrorRates
from whisper_lora_pl.training.dist import gather_objects

log = logging.getLogger(__name__)


def evaluate_sets(
    sets: list[LoadedSet],
    decoder: Decoder,
    feature_extractor,
    stage: str,
    *,
    run_language: str | None,
    long_timestamps: bool = False,
    batch_size: int,
    piece_seconds: float | None,
    whole_seconds: float = 0.0,
    world: int = 1,
    rank: int = 0,
    device: torch.device | str = "cpu",
    folder: Path | None = None,
    when: str = "",
) -> dict[str, float]:
    """Decode and score ``sets``; the metrics of all of them, over all ranks. Rank 0 writes the records. Clips
    decode as the validation split does; long files with the model's timestamps when ``long_timestamps`` (a run
    trained on timestamp labels, as ``transcribe`` decides), else in pieces of ``piece_seconds`` of speech."""
    values: dict[str, float] = {}
    for loaded in sets:
        language = loaded.spec.language or run_language
        set_decoder = replace(decoder, language="auto" if loaded.spec.detect_language else language, timestamps=False)
        prefix = f"{stage}/{loaded.name}/"
        rates = ErrorRates(language, prefix=prefix).to(device)
        if loaded.spec.kind == "long":
            set_decoder.timestamps = long_timestamps
            pieces = (None, 0.0) if long_timestamps else (piece_seconds, whole_seconds)
            records, found = _long(loaded, set_decoder, feature_extractor, language, rates, batch_size, pieces,
                                   world, rank)  # fmt: skip
        else:
            records, found = _clips(loaded, set_decoder, feature_extractor, language, rates, batch_size, world, rank)
        values |= {k: float(v) for k, v in rates.metrics.compute().items()}
        gathered = [r for part in gather_objects(records) for r in part]
        values |= _summary(prefix, loaded, gathered, found, language)
        if folder is not None and rank == 0:
            path = folder / f"{loaded.name}-{when}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            gathered.sort(key=lambda r: r["id"])
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in gathered), encoding="utf-8")
    return values


def _clips(loaded, decoder, extractor, language, rates, batch_size, world, rank) -> tuple[list[dict], dict]:
    mine = range(rank, len(loaded.clips), world)
    records: list[dict] = []
    skipped = 0
    with tqdm(total=len(mine), desc=f"eval set {loaded.name}", unit="clip", disable=rank != 0, leave=False) as bar:
        for start in range(0, len(mine), batch_size):
            batch, features, durations = [], [], []
            for index in mine[start : start + batch_size]:
                example = loaded.clips[index]
                try:
                    wave = load_audio(example.audio, SAMPLING_RATE)
                    features.append(log_mel(extractor, wave))
                except AudioError as err:
                    log.warning("eval set %s: skipping clip %s: %s", loaded.name, example.id, err)
                    skipped += 1
                    continue
                batch.append(example)
                durations.append(len(wave) / SAMPLING_RATE)
            if not batch:
                continue
            what = f"eval set {loaded.name} ({batch[0].id}, ...)"
            results = decoder.isolating(torch.from_numpy(np.stack(features)), durations, "data.eval_batch_size", what)
            pairs = []
            for example, result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    log.warning("eval set %s: skipping clip %s: decoding failed: %s", loaded.name, example.id, result)
                    skipped += 1
                    continue
                pairs.append((example, result))
            if pairs:
                hyps, refs = rates.update([r.text for _, r in pairs], [e.sentence for e, _ in pairs])
                for (example, result), n_hyp, n_ref in zip(pairs, hyps, refs, strict=True):
                    records.append(
                        {"id": example.id, "reference": example.sentence, "hypothesis": result.text}
                        | {"normalized_reference": n_ref, "normalized_hypothesis": n_hyp}
                        | rates.utterance(n_hyp, n_ref)
                        | result.report()
                    )
            bar.update(len(batch))
    return records, {"skipped": skipped}


def _long(loaded, decoder, extractor, language, rates, batch_size, pieces, world, rank) -> tuple[list, dict]:
    mine = loaded.files[rank::world]
    joiner = "" if (language or "") in CHINESE | {"ja"} else " "
    result = transcribe(
        [Path(f.audio) for f in mine],
        decoder,
        extractor,
        batch_size,
        speech=loaded.spec.speech,
        piece_seconds=pieces[0],
        whole_seconds=pieces[1],
    )
    by_path = {record["path"]: record for record in result.records}
    records: list[dict] = []
    pairs = []
    for file in mine:
        record = by_path.get(str(Path(file.audio)))
        if record is None:
            continue  # failed: counted below, warned about by transcribe
        shown = cues.readable(record["chunks"])  # the cues the SRT shows: each timed as decoded
        score = score_cues(shown, file.segments, joiner)
        pairs.append((record["text"], joiner.join(text for *_, text in file.segments)))
        cue_hyps, cue_refs = (
            [rates.normalize(t) for t in score.texts_under],
            [rates.normalize(t) for *_, t in file.segments],
        )
        records.append(
            {
                "id": file.id,
                "reference": pairs[-1][1],
                "hypothesis": record["text"],
                "language": record.get("language"),
                "looped": record["looped"],
                "segments": len(file.segments),
                "cues": score.cues,
                "start_errors": [round(e, 3) for e in score.start_errors],
                "end_errors": [round(e, 3) for e in score.end_errors],
                "cue_edits": [_edits(h, r) for h, r in zip(cue_hyps, cue_refs, strict=True)],
                "cue_chars": sum(len(r) for r in cue_refs),
                "silence_chars": score.silence_chars,
                "texts_under": score.texts_under,
                "srt": [[c["start"], c["end"], c["text"]] for c in shown],
            }
        )
    if pairs:
        rates.update([h for h, _ in pairs], [r for _, r in pairs])
    return records, {"skipped": len(result.failed)}


def _edits(hypothesis: str, reference: str) -> int:
    """Character edits between two normalised texts, counted as ``ErrorRates``' CER counts them."""
    if not reference:
        return len(hypothesis)
    return round(jiwer.cer(reference, hypothesis) * len(reference))


def _summary(prefix: str, loaded: LoadedSet, records: list[dict], found: dict, language: str | None) -> dict:
    skipped = sum(part["skipped"] for part in gather_objects(found)) + sum(loaded.skipped.values())
    values = {f"{prefix}skipped": float(skipped), f"{prefix}looped": float(sum(bool(r["looped"]) for r in records))}
    if loaded.spec.detect_language and records:
        values[f"{prefix}language_accuracy"] = sum(r.get("language") == language for r in records) / len(records)
    if loaded.spec.kind != "long":
        values[f"{prefix}clips"] = float(len(records))
        if skipped:
            rank_zero_info(f"eval set {loaded.name}: scored {len(records)} clips, {skipped} skipped (see the log)")
        return values
    values[f"{prefix}files"] = float(len(records))
    starts = [e for r in records for e in r["start_errors"]]
    ends = [e for r in records for e in r["end_errors"]]
    segments = sum(r["segments"] for r in records)
    chars = sum(r["cue_chars"] for r in records)
    if records:
        values |= {
            f"{prefix}cue_cer": sum(sum(r["cue_edits"]) for r in records) / max(1, chars),
            f"{prefix}cue_start_median": float(np.median(starts)),
            f"{prefix}cue_start_p90": float(np.quantile(starts, 0.9)),
            f"{prefix}cue_end_median": float(np.median(ends)),
            f"{prefix}cue_end_p90": float(np.quantile(ends, 0.9)),
            f"{prefix}cues_per_segment": sum(r["cues"] for r in records) / max(1, segments),
            f"{prefix}silence_chars": float(sum(r["silence_chars"] for r in records)),
        }
    return values
