"""The CTranslate2 export: a folder faster-whisper loads as it is, 128-mel models included."""

import json

import pytest

from tests.conftest import tiny_args
from whisper_lora_pl.audio import load_audio
from whisper_lora_pl.cli import main
from whisper_lora_pl.convert import tiny_whisper
from whisper_lora_pl.deploy import faster_whisper_kwargs
from whisper_lora_pl.export import RunInfo, export

faster_whisper = pytest.importorskip("faster_whisper", reason="the deploy extra: pip install -e '.[deploy]'")


def test_a_128_mel_model_exports_to_a_folder_faster_whisper_loads(cv_release, tmp_path):
    model = tiny_whisper(tmp_path / "tiny-128", num_mel_bins=128)  # shaped like large-v3's input
    main(
        [
            "fit",
            *tiny_args(model, cv_release, tmp_path / "run"),
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=0",
        ]
    )
    (checkpoint,) = (tmp_path / "run").glob("**/checkpoints/*.ckpt")
    folder = export(checkpoint, tmp_path / "out", ("adapter",), ctranslate2="int8")["ctranslate2"]
    assert not (tmp_path / "out" / "merged").exists()  # made in a scratch folder when not asked for
    assert {"model.bin", "config.json", "tokenizer.json", "preprocessor_config.json", "README.md"} <= {
        p.name for p in folder.iterdir()
    }
    assert json.loads((folder / "preprocessor_config.json").read_text())["feature_size"] == 128

    loaded = faster_whisper.WhisperModel(str(folder), device="cpu", compute_type="int8", cpu_threads=1)
    assert loaded.model.n_mels == 128 and loaded.feature_extractor.mel_filters.shape[0] == 128
    info = RunInfo.read(folder)
    kwargs = faster_whisper_kwargs(info) | {"temperature": [0.0]}
    clip = sorted((cv_release / "zh-CN" / "clips").glob("*test*.mp3"))[0]
    segments, about = loaded.transcribe(load_audio(clip), **kwargs)
    assert about.language == "zh" and isinstance("".join(s.text for s in segments), str)
    assert "without_timestamps=True" in (folder / "README.md").read_text()
