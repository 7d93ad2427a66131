"""Every Whisper people fine-tune, in miniature: tiny random models shaped like large-v3 (128 mel bins, v3's
tokenizer with ``<|yue|>``: every special token after the languages one id higher than large-v2's), large-v3-turbo
(4 decoder layers of 32: here 1 of 4) and distil-large-v3 (2 of 32: here 2 of 4), each through fit (int8 + LoRA,
the dynamic encoder), resume, test, export (adapter, merged, CTranslate2) and ``transcribe``, whose text is the
evaluation's on every clip."""

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_args
from whisper_lora_pl.convert import tiny_whisper
from whisper_lora_pl.model.build import DynamicLengthEncoder
from whisper_lora_pl.takehome.export import export
from whisper_lora_pl.takehome.transcribe import decoder_for, load_model, transcribe
from whisper_lora_pl.training.cli import main

#: name -> tiny_whisper's arguments
SHAPES = {
    "large-v3": {"v3": True},
    "large-v3-turbo": {"v3": True, "layers": 4, "decoder_layers": 1, "alignment_heads": [[0, 0], [0, 1]]},
    "distil-large-v3": {"v3": True, "layers": 4, "decoder_layers": 2},
}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def shaped(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, tiny_whisper(tmp_path_factory.mktemp(request.param), **SHAPES[request.param])


def test_a_v3_tokenizer_has_large_v3s_ids(shaped):
    from transformers import WhisperProcessor

    _, folder = shaped
    tokenizer = WhisperProcessor.from_pretrained(folder).tokenizer
    ids = tokenizer.convert_tokens_to_ids(["<|yue|>", "<|transcribe|>", "<|nospeech|>", "<|notimestamps|>", "<|0.00|>"])
    assert (len(tokenizer), ids) == (51866, [50358, 50360, 50363, 50364, 50365])  # openai/whisper-large-v3's


def test_every_shape_trains_resumes_exports_and_transcribes_as_evaluated(shaped, cv_release, tmp_path):
    name, folder = shaped
    run = ["--model.encoder_length=dynamic", "--trainer.limit_val_batches=0", "--data.test_split=train+dev+test"]
    main(["fit", *tiny_args(folder, cv_release, tmp_path / "run", *run), "--trainer.max_steps=2"])
    (first,) = (tmp_path / "run").glob("**/checkpoints/*.ckpt")
    resumed = ["fit", *tiny_args(folder, cv_release, tmp_path / "resumed", *run), "--trainer.max_steps=3"]
    main([*resumed, f"--ckpt_path={first}"])
    (checkpoint,) = (tmp_path / "resumed").glob("**/checkpoints/*.ckpt")
    assert torch.load(checkpoint, weights_only=False)["global_step"] == 3
    main(["test", *tiny_args(folder, cv_release, tmp_path / "test", *run), f"--ckpt_path={checkpoint}"])
    (records,) = (tmp_path / "test").glob("**/predictions/test-step3.jsonl")
    evaluated = {r["id"]: r["hypothesis"] for r in map(json.loads, records.read_text(encoding="utf-8").splitlines())}
    assert len(evaluated) == 8

    written = export(checkpoint, tmp_path / "out", ctranslate2="int8" if _has_deploy() else None)
    clips = sorted((cv_release / "zh-CN" / "clips").glob("*.mp3"))
    for source in ({"model": written["merged"]}, {"adapter": written["adapter"]}, {"checkpoint": checkpoint}):
        model, processor, info = load_model(**{k: str(v) for k, v in source.items()})
        assert model.config.num_mel_bins == 128 and processor.feature_extractor.feature_size == 128
        assert isinstance(model.get_encoder(), DynamicLengthEncoder)
        result = transcribe(clips, decoder_for(model, processor, info), processor.feature_extractor, speech="none")
        texts = {Path(r["path"]).name: r["text"] for r in result.records}  # transcribe strips the edges
        assert texts == {clip.name: evaluated[clip.name].strip() for clip in clips}, (name, source)
    if _has_deploy():
        _check_ctranslate2(written["ctranslate2"], written["merged"])


def _has_deploy() -> bool:
    import importlib.util

    return importlib.util.find_spec("ctranslate2") is not None


def _check_ctranslate2(folder: Path, merged: Path) -> None:
    """CTranslate2's converter keeps what decoding a fine-tuned v3 needs from the generation config (fine-tuned
    large-v3 models hallucinate after conversions that drop them: faster-whisper issues 1099 and 585)."""
    generation = json.loads((merged / "generation_config.json").read_text())
    converted = json.loads((folder / "config.json").read_text())
    assert converted["lang_ids"] == sorted(generation["lang_to_id"].values()) and 50358 in converted["lang_ids"]
    assert converted["suppress_ids"] == generation["suppress_tokens"]
    assert converted["suppress_ids_begin"] == generation["begin_suppress_tokens"]
    assert converted["alignment_heads"] == generation.get("alignment_heads", converted["alignment_heads"])
    assert json.loads((folder / "preprocessor_config.json").read_text())["feature_size"] == 128
