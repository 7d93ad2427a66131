"""A shorter encoder context and an unquantized bfloat16 base: the model, the features, the data filter,
export and transcribe all follow the setting."""

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor, pipeline

from tests.conftest import REPO, make_cv_release, tiny_args, write_clip
from whisper_lora_pl.data.audio import load_audio
from whisper_lora_pl.data.features import log_mel, set_feature_context
from whisper_lora_pl.model.build import build_whisper_lora, count_parameters, set_context
from whisper_lora_pl.takehome.deploy import to_ctranslate2
from whisper_lora_pl.takehome.export import RunInfo, export
from whisper_lora_pl.takehome.transcribe import decoder_for, load_model, transcribe
from whisper_lora_pl.training.cli import main


def test_a_shorter_context_is_whisper_with_the_first_positions(tiny_model):
    model = WhisperForConditionalGeneration.from_pretrained(tiny_model).eval()
    full = model.get_encoder().embed_positions.weight.clone()
    set_context(model, 10.0)
    encoder = model.get_encoder()
    assert encoder.embed_positions.num_embeddings == 500 == model.config.max_source_positions
    assert torch.equal(encoder.embed_positions.weight, full[:500]) and not encoder.embed_positions.weight.requires_grad
    with torch.no_grad():
        assert encoder(torch.zeros(1, 80, 1000)).last_hidden_state.shape == (1, 500, 64)
        with pytest.raises(ValueError, match="length 1000"):
            encoder(torch.zeros(1, 80, 3000))
    with pytest.raises(ValueError, match="longer than the model's 10 s"):
        set_context(model, 15.0)


def test_features_for_a_shorter_context_are_the_first_frames_of_whisper_s():
    wave = load_audio(REPO / "tests" / "assets" / "en_stella.flac")  # 5.2 s
    thirty = log_mel(WhisperFeatureExtractor(), wave)
    fifteen = log_mel(set_feature_context(WhisperFeatureExtractor(), 15.0), wave)
    assert fifteen.shape == (80, 1500) and np.array_equal(fifteen, thirty[:, :1500])


@pytest.fixture(scope="module")
def short_run(tiny_model, tmp_path_factory):
    """A 10 s context run on a corpus with a 12 s clip, and its export."""
    root = tmp_path_factory.mktemp("context")
    splits = {"train": ["今天天气很好", "我们去公园散步"], "test": ["明天见", "他喜欢喝茶"]}
    corpus = make_cv_release(root / "cv", splits)
    write_clip(corpus / "zh-CN" / "clips" / "common_voice_zh-CN_train_1.mp3", seconds=12.0)
    cli = main(
        [
            "fit",
            *tiny_args(tiny_model, corpus, root / "run"),
            "--data.val_split=test",
            "--model.context_seconds=10",
            "--trainer.max_steps=2",
        ]
    )
    (checkpoint,) = (root / "run").glob("**/checkpoints/*.ckpt")
    return cli, export(checkpoint, root / "out"), corpus


def test_a_short_context_run_trains_filters_and_exports(short_run):
    cli, written, corpus = short_run
    assert cli.datamodule.prepared["train"].skipped == {"audio over 10 s": 1}
    batch = next(iter(cli.datamodule.val_dataloader()))
    assert batch["input_features"].shape[-1] == 1000
    assert cli.model.model.get_encoder().embed_positions.num_embeddings == 500

    merged = WhisperForConditionalGeneration.from_pretrained(written["merged"])
    processor = WhisperProcessor.from_pretrained(written["merged"])
    assert merged.config.max_source_positions == 500 and processor.feature_extractor.nb_max_frames == 1000
    assert RunInfo.read(written["adapter"]).context_seconds == 10.0
    assert "set_context(base_model, 10)" in (written["adapter"] / "README.md").read_text()

    clips = sorted((corpus / "zh-CN" / "clips").glob("*test*.mp3"))
    asr = pipeline("automatic-speech-recognition", model=str(written["merged"]), device="cpu")
    piped = [asr({"raw": load_audio(c), "sampling_rate": 16_000})["text"] for c in clips]
    for mode in ("model", "adapter"):
        model, proc, info = load_model(**{mode: str(written["merged" if mode == "model" else "adapter"])})
        assert model.config.max_source_positions == 500
        # the clips are tones: no detector takes them for speech, so every piece is decoded, as the pipeline does
        result = transcribe(clips, decoder_for(model, proc, info), proc.feature_extractor, speech="none")
        assert [r["text"] for r in result.records] == [t.strip() for t in piped]
        with pytest.raises(ValueError, match="encoder sees 10 s"):
            transcribe(clips, decoder_for(model, proc, info), proc.feature_extractor, max_segment=30.0)


def test_a_short_context_model_is_not_converted_for_faster_whisper(short_run, tmp_path):
    """faster-whisper pads every window to 30 s, which CTranslate2 refuses for a shorter encoder ('expected an
    input with shape (1, 80, 1000)'), and a 15 s model converted at 30 s decoded worse (README): a clear error,
    before any work, not a folder that fails or transcribes worse than the evaluation said."""
    _, written, _ = short_run
    with pytest.raises(ValueError, match=r"trained with a 10 s encoder context.*model\.context_seconds: 30"):
        to_ctranslate2(written["merged"], tmp_path / "ct2")
    checkpoint = next((written["merged"].parent.parent / "run").glob("**/checkpoints/*.ckpt"))
    with pytest.raises(ValueError, match="trained with a 10 s encoder context"):
        export(checkpoint, tmp_path / "out", ctranslate2="int8")
    assert not (tmp_path / "out").exists()


def test_an_unquantized_bfloat16_base_keeps_its_type_and_trains_float32_adapters(tiny_model, cv_release, tmp_path):
    model = build_whisper_lora(RunInfo(tiny_model, base_dtype="bfloat16"))
    assert model.get_base_model().model.encoder.layers[0].fc1.weight.dtype == torch.bfloat16
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert count_parameters(model)[0] == 12_288  # the same adapters as on an int8 base
    cli = main(
        [
            "fit",
            *tiny_args(tiny_model, cv_release, tmp_path),
            "--model.quantization=none",
            "--model.base_dtype=bfloat16",
            "--trainer.precision=bf16-mixed",
            "--trainer.max_steps=2",
        ]
    )
    trained = cli.model.model
    assert trained.get_base_model().model.decoder.layers[0].fc1.weight.dtype == torch.bfloat16
    assert {p.dtype for p in trained.parameters() if p.requires_grad} == {torch.float32}
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


def test_an_int8_base_trains_under_mixed_precision(tiny_model, cv_release, tmp_path):
    """The recipe's mixed precision over bitsandbytes' int8 layers (on the CPU Lightning takes 16-mixed as
    bf16-mixed; benchmarks/gpu_paths.py runs 16-mixed on a GPU): finite losses, float32 adapters that moved, and an
    evaluation copy in float32 on the CPU."""
    cli = main(
        [
            "fit",
            *tiny_args(tiny_model, cv_release, tmp_path),
            "--trainer.precision=bf16-mixed",
            "--trainer.max_steps=2",
            "--memory_check.on_cpu=true",
        ]
    )
    trained = cli.model.model
    assert {p.dtype for p in trained.parameters() if p.requires_grad} == {torch.float32}
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert all(p.abs().sum() > 0 for n, p in trained.named_parameters() if "lora_B" in n)  # B starts at zero
    assert cli.model.evaluation_dtype() == torch.float32 and cli.trainer.callback_metrics["val/clips"] == 2
