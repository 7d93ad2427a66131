import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import WhisperFeatureExtractor

import whisper_lora_pl
from tests.conftest import REPO
from whisper_lora_pl.data.audio import load_audio
from whisper_lora_pl.data.features import log_mel

DEMO_CLIPS = sorted((REPO / "data" / "demo-zh-CN" / "zh-CN" / "clips").glob("*.mp3"))


def library(extractor: WhisperFeatureExtractor, wave: np.ndarray) -> np.ndarray:
    return extractor(wave, sampling_rate=16_000, return_tensors="np").input_features[0]


@pytest.mark.parametrize("mels", [80, 128])  # 128: large-v3's extractor
def test_log_mel_equals_the_library(mels):
    """Equal to float32 rounding: the mel matmul's blocking depends on the frame count (1 ulp seen on noise)."""
    extractor = WhisperFeatureExtractor(feature_size=mels)
    rng = np.random.default_rng(0)
    waves = [load_audio(path) for path in DEMO_CLIPS[:12]]
    waves += [
        np.zeros(16_000, dtype=np.float32),  # silence: every frame is the floor
        0.1 * rng.standard_normal(16_000 * 29 + 123).astype(np.float32),  # 29 s: the longest clips the short path takes
        0.1 * rng.standard_normal(160 * 700 + 37).astype(np.float32),  # ends inside a hop
        0.1 * rng.standard_normal(16_000 * 40).astype(np.float32),  # over 30 s: the library's own path, which truncates
    ]
    for wave in waves:
        ours, theirs = log_mel(extractor, wave), library(extractor, wave)
        assert ours.shape == theirs.shape == (mels, 3000)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_the_workers_imports_leave_lightning_and_the_model_code_out():
    """The workers' fork server imports these first: with Lightning among them it would be ready seconds later."""
    code = (
        "import sys; from whisper_lora_pl.data.workers import WORKER_MODULES; import importlib; "
        "[importlib.import_module(m) for m in WORKER_MODULES]; "
        "heavy = ('lightning', 'peft', 'bitsandbytes', 'whisper_lora_pl.model.build'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"


def test_package_names_load_lazily_from_their_modules():
    for name in whisper_lora_pl.__all__:
        value = getattr(whisper_lora_pl, name)
        assert Path(sys.modules[value.__module__].__file__).is_relative_to(Path(whisper_lora_pl.__file__).parent)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        whisper_lora_pl.nothing  # noqa: B018
