import numpy as np
import pytest
import soundfile as sf

from tests.conftest import tone, write_clip
from whisper_lora_pl.data.audio import AudioError, audio_duration, load_audio


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".mp3", ".ogg"])
def test_formats_decode_to_16k_mono(tmp_path, suffix):
    path = write_clip(tmp_path / f"clip{suffix}", seconds=1.5, rate=48_000, channels=2)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    # mp3 adds encoder padding of a few ms; the others are exact
    assert abs(len(wave) - 24_000) <= (1200 if suffix == ".mp3" else 0)
    assert audio_duration(path) == pytest.approx(1.5, abs=0.05)


def test_resampling_keeps_the_tone(tmp_path):
    path = write_clip(tmp_path / "a.wav", seconds=1.0, rate=44_100, freq=1000.0)
    wave = load_audio(path)
    spectrum = np.abs(np.fft.rfft(wave))
    assert np.argmax(spectrum) * 16_000 / len(wave) == pytest.approx(1000.0, abs=2.0)


def test_stereo_is_averaged(tmp_path):
    left_right = np.stack([np.ones(1600), -np.ones(1600) * 0.5], axis=1).astype(np.float32)
    sf.write(tmp_path / "s.wav", left_right, 16_000, subtype="FLOAT")
    assert np.allclose(load_audio(tmp_path / "s.wav"), 0.25)


def test_bytes_input(tmp_path):
    path = write_clip(tmp_path / "b.flac", rate=16_000)
    assert np.allclose(load_audio(path.read_bytes()), tone(1.0, 16_000)[:, 0], atol=1e-4)


def test_missing_and_corrupt_files_raise_audio_error(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "nope.mp3")
    (tmp_path / "bad.mp3").write_bytes(b"this is not audio" * 10)
    with pytest.raises(AudioError, match=r"bad\.mp3"):
        audio_duration(tmp_path / "bad.mp3")
