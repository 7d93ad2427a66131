"""What users take home: per-utterance evaluation files, predictions, exported adapters and merged models."""

import json
import re

import numpy as np
import pytest
import soundfile as sf
import torch
from peft import PeftModel
from transformers import WhisperForConditionalGeneration, WhisperProcessor, pipeline

from tests.conftest import REPO
from whisper_lora_pl.audio import load_audio
from whisper_lora_pl.cli import main
from whisper_lora_pl.export import export
from whisper_lora_pl.module import WhisperLoRA
from whisper_lora_pl.transcribe import find_audio, load_model, transcribe, write

TINY = str(REPO / "configs" / "tiny-cpu.yaml")


def cli_args(tiny_model, cv_release, folder, *extra):
    return [
        "--config",
        TINY,
        f"--model.model_name={tiny_model}",
        f"--data.source.init_args.root={cv_release}",
        f"--trainer.default_root_dir={folder}",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(tiny_model, cv_release, tmp_path_factory):
    """A checkpoint after 6 int8 steps at lr 1e-2: enough for the adapters to move the logits."""
    folder = tmp_path_factory.mktemp("trained")
    main(["fit", *cli_args(tiny_model, cv_release, folder, "--trainer.max_steps=6", "--trainer.limit_val_batches=0")])
    (checkpoint,) = folder.glob("**/checkpoints/*.ckpt")
    return checkpoint


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_test_writes_every_utterance_and_the_rates_add_up(tiny_model, cv_release, trained, tmp_path):
    cli = main(["test", *cli_args(tiny_model, cv_release, tmp_path), f"--ckpt_path={trained}"])
    (path,) = tmp_path.glob("**/predictions/test-step6.jsonl")
    records = read_jsonl(path)
    assert sorted(r["reference"] for r in records) == ["他喜欢喝茶", "明天见"]
    assert {"id", "hypothesis", "normalized_reference", "normalized_hypothesis", "wer", "cer"} <= set(records[0])
    # the corpus CER is total edits over total reference characters: the per-utterance rates must add up to it
    edits = sum(r["cer"] * len(r["normalized_reference"]) for r in records)
    total = sum(len(r["normalized_reference"]) for r in records)
    assert cli.trainer.callback_metrics["test/cer"].item() == pytest.approx(edits / total, rel=1e-5)


def test_predict_writes_hypotheses_without_references(tiny_model, cv_release, trained, tmp_path):
    manifest = tmp_path / "audio-only.jsonl"
    clips = sorted((cv_release / "zh-CN" / "clips").glob("*test*.mp3"))
    manifest.write_text("".join(json.dumps({"audio": str(c)}) + "\n" for c in clips))
    main(
        [
            "predict",
            *cli_args(tiny_model, cv_release, tmp_path),
            "--data.source=whisper_lora_pl.sources.Manifest",
            f"--data.source.init_args.files={{predict: {manifest}}}",
            "--data.source.init_args.text_column=null",
            "--data.predict_split=predict",
            f"--ckpt_path={trained}",
        ]
    )
    (path,) = tmp_path.glob("**/predictions/predict.jsonl")
    records = read_jsonl(path)
    assert sorted(r["id"] for r in records) == sorted(str(c) for c in clips)
    assert all(isinstance(r["hypothesis"], str) for r in records)


def test_exported_adapter_and_merged_model_match_the_module(tiny_model, cv_release, trained, tmp_path):
    written = export(trained, tmp_path)
    clips = sorted((cv_release / "zh-CN" / "clips").glob("*test*.mp3"))
    processor = WhisperProcessor.from_pretrained(written["adapter"])
    audio = [load_audio(c) for c in clips]
    features = processor.feature_extractor(audio, sampling_rate=16_000, return_tensors="pt").input_features
    decoder_input = torch.tensor([[50258, 50260, 50359, 50363]] * len(clips))

    # the LightningModule, on the same full-precision base the export merges into
    module = WhisperLoRA(tiny_model, quantization="none", max_new_tokens=4)
    module.configure_model()
    module.eval()
    state = torch.load(trained, weights_only=False)
    module.on_load_checkpoint(state)
    module.load_state_dict(state["state_dict"], strict=False)
    with torch.no_grad():
        expected_logits = module.model(input_features=features, decoder_input_ids=decoder_input).logits
    expected_text = module.transcribe(features)

    # (a) the tutorial's inference code: base + PeftModel.from_pretrained(adapter folder)
    base = WhisperForConditionalGeneration.from_pretrained(tiny_model)
    with torch.no_grad():
        bare_logits = base(input_features=features, decoder_input_ids=decoder_input).logits
    assert not torch.allclose(bare_logits, expected_logits, atol=1e-3)  # the adapters matter
    peft = PeftModel.from_pretrained(base, written["adapter"]).eval()
    with torch.no_grad():
        assert torch.allclose(peft(input_features=features, decoder_input_ids=decoder_input).logits, expected_logits)
        tokens = peft.generate(input_features=features, language="zh", task="transcribe", max_new_tokens=4)
    assert processor.batch_decode(tokens, skip_special_tokens=True) == expected_text

    # (b) the merged folder, through transformers.pipeline, language taken from its generation config
    merged = WhisperForConditionalGeneration.from_pretrained(written["merged"])
    with torch.no_grad():
        logits = merged(input_features=features, decoder_input_ids=decoder_input).logits
    assert torch.allclose(logits, expected_logits, atol=1e-4)
    asr = pipeline("automatic-speech-recognition", model=str(written["merged"]), device="cpu")
    texts = [asr({"raw": a, "sampling_rate": 16_000}, generate_kwargs={"max_new_tokens": 4})["text"] for a in audio]
    assert [t.strip() for t in texts] == [t.strip() for t in expected_text]


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
    model, processor = load_model("pypi:whisper-tiny.en", None, None)
    result = transcribe(files, model, processor)
    assert list(result.failed) == [str(audio_folder / "broken.mp3")]
    texts = {r["path"].split("/")[-1]: r["text"].lower() for r in result.records}
    assert texts.keys() == {"long.wav", "nested.wav", "short.flac"}
    assert "bring these things with her from the store" in texts["short.flac"]
    assert "bring these things with her from the store" in texts["nested.wav"]  # 44.1 kHz stereo
    assert texts["long.wav"].count("from the store") >= 7  # all 9 repetitions across the 30 s windows, nearly

    write(result, tmp_path)
    cues = re.findall(
        r"(\d+)\n(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)\n", (tmp_path / "long.srt").read_text()
    )
    assert [int(c[0]) for c in cues] == list(range(1, len(cues) + 1)) and len(cues) >= 7
    assert cues[-1][2] > "00:00:45,000" and [c[1] for c in cues] == sorted(c[1] for c in cues)
    lines = read_jsonl(tmp_path / "transcripts.jsonl")
    assert [("error" in line) for line in lines] == [False, False, False, True]
    assert (tmp_path / "short.txt").read_text().strip() == result.records[2]["text"]
