"""Cutting long audio at pauses and timing subtitle cues from where speech is: frame energy on tone bursts, and
silero-vad on real speech."""

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from whisper_lora_pl.data.audio import load_audio
from whisper_lora_pl.data.segments import split

REPO = Path(__file__).resolve().parent.parent
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
    (segment,) = split(wave, RATE, detector="energy")
    assert (segment.start, segment.end) == (0, len(wave))  # decoded whole, like an evaluation clip
    assert abs(segment.speech_start - 0.5) <= 0.02 and abs(segment.speech_end - 2.5) <= 0.02


def test_long_audio_is_cut_inside_pauses_into_segments_the_encoder_can_see():
    parts = []
    for i in range(8):  # 8 sentences of 4-6 s with pauses of 0.4-1.2 s: 49.6 s
        parts += [("s", 4.0 + (i % 3)), ("p", 0.4 + 0.4 * (i % 3))]
    wave, spans = speech_and_pauses(parts)
    for longest in (30.0, 8.0):
        segments = split(wave, RATE, max_seconds=longest, detector="energy")
        assert segments[0].start == 0 and segments[-1].end == len(wave)
        assert all(a.end == b.start for a, b in itertools.pairwise(segments))  # contiguous, nothing dropped
        assert all((s.end - s.start) / RATE <= longest for s in segments)
        for s in segments[1:]:  # every cut falls in a pause, never inside a sentence
            t = s.start / RATE
            assert not any(a < t < b for a, b in spans), t
    # at 8 s each segment holds one sentence, and its cue times are the sentence's, to a frame
    segments = split(wave, RATE, max_seconds=8.0, detector="energy")
    assert len(segments) == len(spans)
    for s, (a, b) in zip(segments, spans, strict=True):
        assert abs(s.speech_start - a) <= 0.02 and abs(s.speech_end - b) <= 0.02


@pytest.mark.parametrize("detector", ["vad", "energy"])
def test_silence_has_no_speech(detector):
    (segment,) = split(np.zeros(RATE, np.float32), RATE, detector=detector)
    assert not segment.has_speech
    (segment,) = split(np.zeros(RATE, np.float32), RATE, detector="none")
    assert segment.has_speech and (segment.speech_start, segment.speech_end) == (0.0, 1.0)


def test_noise_and_tones_are_not_speech_to_the_vad():
    rng = np.random.default_rng(0)
    t = np.arange(3 * RATE) / RATE
    chord = sum(0.2 * np.sin(2 * np.pi * f * t) for f in (262, 330, 392))  # a C major chord, 3 s
    noise = 0.3 * rng.standard_normal(3 * RATE)
    burst = np.concatenate([noise[:800], np.zeros(RATE)]).astype(np.float32)  # 50 ms of noise, then silence
    for wave in (chord, noise, burst):
        (segment,) = split(wave.astype(np.float32), RATE)
        assert not segment.has_speech
    (segment,) = split(burst, RATE, detector="energy")
    assert segment.has_speech  # the energy split takes any burst for speech


def demo_speech(count: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """``count`` of the demo's Mandarin clips joined with pauses of 0.4-1.2 s, and each clip's place (seconds)."""
    clips = sorted((REPO / "data" / "demo-zh-CN" / "zh-CN" / "clips").glob("*.mp3"))[:count]
    pieces, spans, t = [], [], 0.0
    for i, clip in enumerate(clips):
        wave = load_audio(clip)
        pause = np.zeros(int((0.4 + 0.4 * (i % 3)) * RATE), np.float32)
        pieces += [wave, pause]
        spans.append((t, t + len(wave) / RATE))
        t += (len(wave) + len(pause)) / RATE
    return np.concatenate(pieces), spans


def test_the_vad_cuts_real_speech_in_its_pauses_and_times_cues_at_the_sentences():
    wave, spans = demo_speech(10)
    assert len(wave) / RATE > 40
    segments = split(wave, RATE, max_seconds=30.0)
    assert len(segments) >= 2 and segments[0].start == 0 and segments[-1].end == len(wave)
    assert all(a.end == b.start for a, b in itertools.pairwise(segments))
    for s in segments[1:]:  # every cut between two clips
        t = s.start / RATE
        assert not any(a < t < b for a, b in spans), t
    # one clip per segment: each cue starts and ends within 0.3 s of its clip (espeak leaves a little silence)
    for s, (a, b) in zip(split(wave, RATE, max_seconds=5.5), spans, strict=True):
        assert abs(s.speech_start - a) <= 0.3 and abs(s.speech_end - b) <= 0.3, (s, a, b)


def test_the_vad_leaves_torchs_thread_count_alone():
    """silero_vad sets torch's threads to 1 for the whole process when imported: transcribe decoded at half speed
    on 2 cores. In a fresh process, as a user's transcribe starts."""
    script = (
        "import numpy as np, torch\n"
        "torch.set_num_threads(2)\n"
        "from whisper_lora_pl.data.segments import split\n"
        "split(np.zeros(16_000, np.float32), 16_000)\n"
        "print(torch.get_num_threads())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.split()[-1] == "2"
