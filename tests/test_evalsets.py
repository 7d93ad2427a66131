"""Evaluation sets (data.eval_sets): the long-form scorer on known errors, bad segments, pieces cut at pauses, language
identification on a real model, and a fit's per-set figures equal to a separate `train.py test` of its checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.conftest import REPO, tiny_args, tone
from whisper_lora_pl.data.evalsets import EvalSet, check_segments, load_set, read_srt
from whisper_lora_pl.data.segments import at_pauses, split
from whisper_lora_pl.decoding.longscore import score_cues
from whisper_lora_pl.training.cli import main

SEGMENTS = [(1.0, 3.0, "今天天气很好"), (4.0, 6.0, "我们去公园"), (8.0, 9.0, "明天见")]


def cue(start: float, end: float, text: str) -> dict:
    return {"start": start, "end": end, "text": text}


def test_cues_that_match_the_segments_score_zero():
    score = score_cues([cue(a, b, t) for a, b, t in SEGMENTS], SEGMENTS)
    assert score.start_errors == score.end_errors == [0.0, 0.0, 0.0]
    assert score.texts_under == [t for *_, t in SEGMENTS] and score.cues == 3 and score.silence_chars == 0


def test_one_cue_over_everything_is_off_by_the_sentences_lengths():
    """One cue for three sentences (what a 30 s piece gives): each segment's nearest cue is that one, so its end is
    off by the rest of the file; its middle (5.0) falls in the second segment, which gets all the text."""
    score = score_cues([cue(1.0, 9.0, "今天天气很好我们去公园明天见")], SEGMENTS)
    assert score.start_errors == [0.0, 3.0, 7.0] and score.end_errors == [6.0, 3.0, 0.0]
    assert score.texts_under == ["", "今天天气很好我们去公园明天见", ""]


def test_right_times_with_the_wrong_text_under_them():
    """Cue count and times right, texts shifted by one: every segment has the text of another (what splitting one
    piece's text by length gave). Times score perfectly; the text under each cue does not."""
    texts = ["明天见", "今天天气很好", "我们去公园"]
    score = score_cues([cue(a, b, t) for (a, b, _), t in zip(SEGMENTS, texts, strict=True)], SEGMENTS)
    assert score.start_errors == [0.0, 0.0, 0.0] and score.texts_under == texts


def test_missing_cues_and_text_on_silence():
    score = score_cues([cue(1.2, 2.8, "今天天气很好"), cue(6.5, 7.5, "谢谢观看"), cue(9.5, 9.9, " ")], SEGMENTS)
    assert score.cues == 2  # an empty cue is no cue
    assert score.silence_chars == 4  # the cue between 6.5 and 7.5 overlaps no segment
    assert score.start_errors == pytest.approx([0.2, 2.0, 1.0]) and score.end_errors == pytest.approx([0.2, 2.0, 1.0])
    assert score.texts_under == ["今天天气很好", "", ""]


@pytest.mark.parametrize(
    ("segments", "message"),
    [
        ([(0.0, 2.0, "a"), (1.5, 3.0, "b")], "segment 2 (1.5-3.0 s) overlaps segment 1"),
        ([(0.0, 2.0, "a"), (2.0, 12.0, "b")], "segment 2 ends at 12.0 s, past the audio's end (10.00 s)"),
        ([(0.0, 2.0, "  ")], "segment 1 (0.0-2.0 s) has no text"),
        ([(3.0, 2.0, "a")], "segment 1: needs 0 <= start < end"),
        ([], "no reference segments"),
    ],
)
def test_bad_segments_are_an_error_naming_the_file_and_segment(segments, message):
    with pytest.raises(ValueError, match=r"talk\.wav") as err:
        check_segments(segments, 10.0, "talk.wav")
    assert message in str(err.value)


def test_srt_beside_the_audio_and_a_missing_file_is_a_counted_skip(tmp_path):
    sf.write(tmp_path / "talk.wav", np.zeros(16_000 * 5, np.float32), 16_000)
    (tmp_path / "talk.srt").write_text(
        "1\n00:00:00,500 --> 00:00:02,000\n你好\n\n2\n00:00:02,500 --> 00:00:04,250\n再见\n世界\n"
    )
    assert read_srt(tmp_path / "talk.srt") == [(0.5, 2.0, "你好"), (2.5, 4.25, "再见 世界")]
    rows = [{"audio": "talk.wav"}, {"audio": "gone.wav", "segments": [{"start": 0, "end": 1, "text": "x"}]}]
    manifest = tmp_path / "long.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_set("talks", EvalSet(str(manifest), kind="long"), 30.0)
    assert [f.segments for f in loaded.files] == [((0.5, 2.0, "你好"), (2.5, 4.25, "再见 世界"))]
    assert sum(loaded.skipped.values()) == 1 and "1 long files kept" in loaded.summary()


def sentences_with_pauses(lengths: list[float], pauses: list[float], rate: int = 16_000) -> tuple[np.ndarray, list]:
    pieces, spans, t = [np.zeros(rate // 2, np.float32)], [], 0.5
    for n, length in enumerate(lengths):
        pieces.append(tone(length, rate, freq=300 + 40 * n)[:, 0])
        spans.append((t, t + length))
        t += length
        if n < len(pauses):
            pieces.append(np.zeros(int(pauses[n] * rate), np.float32))
            t += pauses[n]
    pieces.append(np.zeros(rate // 2, np.float32))
    return np.concatenate(pieces), spans


def test_pieces_hold_one_sentence_when_the_run_trained_on_one():
    """Four 3 s "sentences" with pauses: the 30 s split keeps them in one piece; pieces of the training clips'
    length cut at every pause, each piece's speech span that sentence's; longer pieces join neighbours."""
    wave, spans = sentences_with_pauses([3.0, 3.0, 2.0, 3.0], [0.8, 1.2, 0.6])
    assert len([s for s in split(wave, 16_000, 30.0, detector="energy") if s.has_speech]) == 1
    pieces = at_pauses(wave, 16_000, 4.0, detector="energy")
    assert len(pieces) == 4
    for piece, (start, end) in zip(pieces, spans, strict=True):
        assert abs(piece.speech_start - start) <= 0.04 and abs(piece.speech_end - end) <= 0.04
        assert piece.start / 16_000 <= start and piece.end / 16_000 >= end
    joined = at_pauses(wave, 16_000, 7.5, detector="energy")  # 3 + 0.8 + 3 = 6.8 fits, then 2 + 0.6 + 3 = 5.6
    assert [(round(p.speech_start, 1), round(p.speech_end, 1)) for p in joined] == [(0.5, 7.3), (8.5, 14.1)]
    assert at_pauses(np.zeros(16_000 * 3, np.float32), 16_000, 4.0, detector="energy")[0].has_speech is False
    # a file no longer than the longest training clip is decoded whole, as an evaluation clip is
    short, _ = sentences_with_pauses([2.0, 2.0], [0.5])
    assert len(at_pauses(short, 16_000, 2.5, detector="energy")) == 2
    assert len(at_pauses(short, 16_000, 2.5, detector="energy", whole_seconds=6.0)) == 1


@pytest.mark.slow
def test_language_identification_on_real_weights():
    """whisper-base (real weights) left to detect: English audio -> en; asked for zh, the prompt says zh."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from whisper_lora_pl.convert import resolve_model_name
    from whisper_lora_pl.data.audio import load_audio
    from whisper_lora_pl.data.features import log_mel
    from whisper_lora_pl.decoding.decode import Decoder, detect_languages

    whisper_base = resolve_model_name("pypi:whisper-base")
    model = WhisperForConditionalGeneration.from_pretrained(whisper_base).eval()
    processor = WhisperProcessor.from_pretrained(whisper_base)
    clips = sorted((REPO / "data" / "demo-retention" / "en-clips").glob("*.ogg"))[:4]
    waves = [load_audio(p) for p in clips]
    features = torch.from_numpy(np.stack([log_mel(processor.feature_extractor, w) for w in waves]))
    seconds = [len(w) / 16_000 for w in waves]
    detected = Decoder(model, processor.tokenizer, "auto", "transcribe", max_new_tokens=40)(features, seconds)
    assert [d.language for d in detected] == ["en"] * 4
    assert "train station" in detected[0].text
    forced = Decoder(model, processor.tokenizer, "zh", "transcribe", max_new_tokens=40)(features, seconds)
    assert [d.language for d in forced] == ["zh"] * 4
    assert detect_languages(model, processor.tokenizer, features) == ["en"] * 4  # one step, as generate detects


def write_sets(folder: Path, corpus: Path) -> str:
    """A clip set (the corpus's test clips, as a manifest) and a long set (two tones with a pause, and a file that is
    missing) as the JSON of ``--data.eval_sets``."""
    clips = sorted((corpus / "zh-CN" / "clips").glob("*test*"))
    (folder / "clips.jsonl").write_text("".join(json.dumps({"audio": str(c), "text": "明天见"}) + "\n" for c in clips))
    wave, spans = sentences_with_pauses([1.5, 1.0], [0.7])
    sf.write(folder / "long.wav", wave, 16_000)
    rows = [
        {
            "audio": "long.wav",
            "segments": [{"start": a, "end": b, "text": t} for (a, b), t in zip(spans, "甲乙", strict=True)],
        },
        {"audio": "gone.wav", "segments": [{"start": 0.0, "end": 1.0, "text": "丙"}]},
    ]
    (folder / "long.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    sets = {
        "clips": {"manifest": str(folder / "clips.jsonl"), "detect_language": True},
        "talks": {"manifest": str(folder / "long.jsonl"), "kind": "long", "speech": "energy"},
    }
    return json.dumps(sets)


def test_a_fits_set_figures_equal_a_separate_test_of_its_checkpoint(tiny_model, cv_release, tmp_path):
    """The last validation of a tiny fit scores each set; `train.py test` of the checkpoint it wrote scores them
    again: the same figures (the long set's pieces come from the checkpoint's recorded clip length)."""
    sets = write_sets(tmp_path, cv_release)
    args = [*tiny_args(tiny_model, cv_release, tmp_path), f"--data.eval_sets={sets}", "--trainer.max_steps=2"]
    fit = main(["fit", *args, "--trainer.num_sanity_val_steps=0"])
    validated = {k: float(v) for k, v in fit.trainer.callback_metrics.items() if k.startswith("val/")}
    checkpoint = next(tmp_path.glob("**/checkpoints/*.ckpt"))
    saved = torch.load(checkpoint, weights_only=True)
    assert (saved["piece_seconds"], saved["whole_seconds"]) == pytest.approx((1.125, 1.5))  # of 1, 1, 1.25, 1.5 s
    test = main(["test", *args, f"--ckpt_path={checkpoint}"])
    tested = {k: float(v) for k, v in test.trainer.callback_metrics.items() if k.startswith("test/")}
    for name in ("clips/cer", "clips/clips", "clips/language_accuracy", "talks/cer", "talks/files", "talks/skipped",
                 "talks/cue_start_median", "talks/cues_per_segment", "talks/cue_cer"):  # fmt: skip
        assert math.isclose(validated[f"val/{name}"], tested[f"test/{name}"], rel_tol=1e-6), name
    assert validated["val/clips/clips"] == 2 and validated["val/talks/files"] == 1
    assert validated["val/talks/skipped"] == 1  # gone.wav: counted, not a crash
    records = [json.loads(line) for line in next(tmp_path.glob("**/predictions/talks-test-*.jsonl")).open()]
    assert [r["id"] for r in records] == ["long.wav"] and records[0]["segments"] == 2


def test_the_model_card_shows_the_base_beside_the_fine_tuned_model_on_every_set():
    from whisper_lora_pl.takehome.export import set_table

    evaluation = {
        "cer": 0.583,
        "sets": {"val/en-long/cer": 0.531, "val/en-long/looped": 0.0, "val/en-detect/language_accuracy": 0.0},
        "before": {"val/cer": 2.127, "val/en-long/cer": 0.339, "val/en-detect/language_accuracy": 0.833},
    }
    assert set_table(evaluation)[1:] == [
        "| evaluation set: figure | base (before training) | fine-tuned |",
        "| --- | --- | --- |",
        "| validation split: cer | 2.127 | 0.583 |",
        "| en-detect: language_accuracy | 0.833 | 0.000 |",
        "| en-long: cer | 0.339 | 0.531 |",
        "",
    ]
    assert set_table({"cer": 0.5}) == []


def test_transcribe_records_the_language_of_each_cue_and_file(tiny_model, tmp_path):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from whisper_lora_pl.decoding.decode import Decoder
    from whisper_lora_pl.decoding.longform import transcribe

    model = WhisperForConditionalGeneration.from_pretrained(tiny_model).eval()
    processor = WhisperProcessor.from_pretrained(tiny_model)
    wave, _ = sentences_with_pauses([1.5, 1.0], [0.7])
    sf.write(tmp_path / "two.wav", wave, 16_000)
    for language in ("zh", "auto"):
        decoder = Decoder(model, processor.tokenizer, language, "transcribe", max_new_tokens=4)
        (record,) = transcribe([tmp_path / "two.wav"], decoder, processor.feature_extractor, speech="energy",
                               piece_seconds=1.0).records  # fmt: skip
        assert len(record["chunks"]) == 2 and all(c["language"] for c in record["chunks"])
        assert record["language"] == (language if language != "auto" else record["chunks"][0]["language"])
