"""Cutting long audio at pauses and timing subtitle cues from where speech is."""

import itertools

import numpy as np

from whisper_lora_pl.segments import split

RATE = 16_000


def speech_and_pauses(parts: list[tuple[str, float]]) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """A wave of tone bursts ("s") and near-silence ("p") with a little noise; returns it and the bursts' times."""
    rng = np.random.default_rng(0)
    pieces, spans, t = [], [], 0.0
    for kind, seconds in parts:
        n = int(seconds * RATE)
        noise = 1e-4 * rng.standard_normal(n)
        if kind == "s":
            pieces.append(0.3 * np.sin(2 * np.pi * 220 * np.arange(n) / RATE) + noise)
            spans.append((t, t + seconds))
        else:
            pieces.append(noise)
        t += seconds
    return np.concatenate(pieces).astype(np.float32), spans


def test_a_short_clip_is_one_segment_timed_at_its_speech():
    wave, _ = speech_and_pauses([("p", 0.5), ("s", 2.0), ("p", 0.7)])
    (segment,) = split(wave, RATE)
    assert (segment.start, segment.end) == (0, len(wave))  # decoded whole, like an evaluation clip
    assert abs(segment.speech_start - 0.5) <= 0.02 and abs(segment.speech_end - 2.5) <= 0.02


def test_long_audio_is_cut_inside_pauses_into_segments_the_encoder_can_see():
    parts = []
    for i in range(8):  # 8 sentences of 4-6 s with pauses of 0.4-1.2 s: 49.6 s
        parts += [("s", 4.0 + (i % 3)), ("p", 0.4 + 0.4 * (i % 3))]
    wave, spans = speech_and_pauses(parts)
    for longest in (30.0, 8.0):
        segments = split(wave, RATE, max_seconds=longest)
        assert segments[0].start == 0 and segments[-1].end == len(wave)
        assert all(a.end == b.start for a, b in itertools.pairwise(segments))  # contiguous, nothing dropped
        assert all((s.end - s.start) / RATE <= longest for s in segments)
        for s in segments[1:]:  # every cut falls in a pause, never inside a sentence
            t = s.start / RATE
            assert not any(a < t < b for a, b in spans), t
    # at 8 s each segment holds one sentence, and its cue times are the sentence's, to a frame
    segments = split(wave, RATE, max_seconds=8.0)
    assert len(segments) == len(spans)
    for s, (a, b) in zip(segments, spans, strict=True):
        assert abs(s.speech_start - a) <= 0.02 and abs(s.speech_end - b) <= 0.02


def test_silence_has_no_speech():
    (segment,) = split(np.zeros(RATE, np.float32), RATE)
    assert not segment.has_speech
