import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperProcessor

from tests.conftest import SENTENCES, make_cv_release, write_clip, write_tsv
from whisper_lora_pl.data.audio import audio_duration, load_audio
from whisper_lora_pl.data.collate import SpeechCollator, UnrepeatedDistributedSampler
from whisper_lora_pl.data.datamodule import WhisperDataModule
from whisper_lora_pl.data.sources import CommonVoiceFolder, DataCollective, HubDataset, Manifest

SOT = 50258


def feature(value: float) -> np.ndarray:
    return np.full((80, 3000), value, dtype=np.float32)


def test_collator_pads_with_minus_100_and_strips_start_token():
    items = [
        {"input_features": feature(0.0), "labels": [SOT, 50260, 50359, 50363, 11, 12, 50257], "index": 0, "id": "a"},
        {"input_features": feature(1.0), "labels": [SOT, 50260, 50359, 50363, 13, 50257], "index": 1, "id": "b"},
    ]
    batch = SpeechCollator(SOT)(items)
    assert batch["input_features"].shape == (2, 80, 3000)
    assert batch["labels"].tolist() == [
        [50260, 50359, 50363, 11, 12, 50257],
        [50260, 50359, 50363, 13, 50257, -100],
    ]
    assert batch["index"].tolist() == [0, 1] and batch["id"] == ["a", "b"]


def test_collator_keeps_start_token_unless_every_row_has_it_and_drops_failed_items():
    items = [
        {"input_features": feature(0.0), "labels": [SOT, 5], "index": 0, "id": "a"},
        None,  # a clip that failed to decode
        {"input_features": feature(1.0), "labels": [7, 8, 9], "index": 2, "id": "c"},
    ]
    batch = SpeechCollator(SOT)(items)
    assert batch["labels"].tolist() == [[SOT, 5, -100], [7, 8, 9]]
    assert SpeechCollator(SOT)([None, None]) is None
    gone = SpeechCollator(SOT)([{"index": 3, "id": "d", "skip": "not audio"}, None])
    assert gone == {"skipped": {"d": "not audio"}}  # a batch of skipped clips still says which and why
    assert SpeechCollator(SOT)([*items, {"index": 3, "id": "d", "skip": "empty file"}])["skipped"] == {
        "d": "empty file"
    }
    unlabelled = SpeechCollator(SOT)([{"input_features": feature(0.0), "labels": [], "index": 0, "id": "x"}])
    assert unlabelled["labels"].shape == (1, 0)


def test_collator_matches_the_tutorial_collator(tiny_model):
    """Parity with DataCollatorSpeechSeq2SeqWithPadding (feature_extractor.pad + tokenizer.pad + masked_fill)."""
    processor = WhisperProcessor.from_pretrained(tiny_model)
    processor.tokenizer.set_prefix_tokens(language="zh", task="transcribe")
    labels = [processor.tokenizer(s).input_ids for s in SENTENCES[:3]]
    items = [{"input_features": feature(i), "labels": ids, "index": i, "id": str(i)} for i, ids in enumerate(labels)]

    batch = processor.feature_extractor.pad(
        [{"input_features": x["input_features"]} for x in items], return_tensors="pt"
    )
    padded = processor.tokenizer.pad([{"input_ids": ids} for ids in labels], return_tensors="pt")
    reference = padded["input_ids"].masked_fill(padded.attention_mask.ne(1), -100)
    if (reference[:, 0] == processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")).all():
        reference = reference[:, 1:]

    ours = SpeechCollator(SOT)(items)
    assert torch.equal(ours["labels"], reference)
    assert torch.equal(ours["input_features"], batch["input_features"])


def test_unrepeated_sampler_covers_each_index_once():
    dataset = list(range(7))
    shards = [list(UnrepeatedDistributedSampler(dataset, 3, rank)) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(7))
    assert [len(UnrepeatedDistributedSampler(dataset, 3, r)) for r in range(3)] == [3, 2, 2]


def test_common_voice_folder_reads_split_expressions(cv_release):
    source = CommonVoiceFolder(str(cv_release), "zh-CN")
    assert source.splits() == ["dev", "test", "train"]
    both = source.examples("train+validation")  # `validation` is Common Voice's `dev`
    assert [e.sentence for e in both] == SENTENCES[:4] + SENTENCES[4:]
    assert Path(both[0].audio).is_file()


def test_common_voice_later_release_columns(tmp_path):
    root = make_cv_release(tmp_path, {"train": ["你好"]})
    tsv = root / "zh-CN" / "train.tsv"
    columns = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age"]
    write_tsv(tsv, [{"path": "common_voice_zh-CN_train_0.mp3", "sentence": "你好", "sentence_id": "x"}], columns)
    assert [e.sentence for e in CommonVoiceFolder(str(root)).examples("train")] == ["你好"]


def test_unknown_split_and_column_are_clear_errors(cv_release):
    with pytest.raises(ValueError, match=r"unknown split 'tain'.*'train'"):
        CommonVoiceFolder(str(cv_release)).examples("tain")
    with pytest.raises(ValueError, match="no text column 'transcript'"):
        CommonVoiceFolder(str(cv_release), text_column="transcript").examples("train")
    with pytest.raises(FileNotFoundError, match="Common Voice folder not found"):
        CommonVoiceFolder("/nonexistent/cv").examples("train")


def test_manifest_jsonl_and_csv(tmp_path):
    write_clip(tmp_path / "audio" / "a.wav", rate=16_000)
    (tmp_path / "train.jsonl").write_text(json.dumps({"file": "audio/a.wav", "text": "你好"}) + "\n")
    (tmp_path / "test.csv").write_text("file,text\naudio/a.wav,再见\n")
    source = Manifest({"train": str(tmp_path / "train.jsonl"), "test": str(tmp_path / "test.csv")}, audio_column="file")
    (train,) = source.examples("train")
    assert train.audio == str(tmp_path / "audio" / "a.wav") and train.sentence == "你好"
    assert source.examples("test")[0].sentence == "再见"
    with pytest.raises(ValueError, match="no audio column 'path'"):
        Manifest({"train": str(tmp_path / "train.jsonl")}, audio_column="path").examples("train")


def write_parquet_dataset(folder: Path, splits: dict[str, list[str]]) -> Path:
    """A hub-shaped dataset (parquet, audio as encoded bytes), written without torchcodec."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = datasets.Features({"audio": datasets.Audio(sampling_rate=48_000), "sentence": datasets.Value("string")})
    meta = {"huggingface": json.dumps({"info": {"features": features.to_dict()}})}
    (folder / "data").mkdir(parents=True)
    for split, sentences in splits.items():
        audio = [
            {"bytes": write_clip(folder / f"{split}{i}.flac").read_bytes(), "path": f"{i}.flac"}
            for i in range(len(sentences))
        ]
        table = pa.table({"audio": audio, "sentence": sentences}).replace_schema_metadata(meta)
        pq.write_table(table, folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder


def test_hub_dataset_reads_audio_bytes_without_torchcodec(tmp_path):
    folder = write_parquet_dataset(tmp_path / "ds", {"train": ["你好", "再见"], "validation": ["测试"]})
    source = HubDataset(str(folder))
    examples = source.examples("train+validation")
    assert [e.sentence for e in examples] == ["你好", "再见", "测试"]
    decoded = [load_audio(e.audio) for e in examples]
    assert [round(len(wave) / 16_000, 3) for wave in decoded] == [1.0, 1.0, 1.0]
    # the examples refer to the cached table: pickled for a worker, they do not carry the audio
    audio_bytes = sum(len(e.audio.read()) for e in examples)
    assert audio_bytes > 60_000
    assert len(pickle.dumps(examples)) < 8_000
    with pytest.raises(ValueError, match="no text column 'text'"):
        HubDataset(str(folder), text_column="text").examples("train")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        source.examples("dev")


def test_data_collective_downloads_once_into_the_release_layout(tmp_path, monkeypatch):
    calls = []

    def download_dataset(dataset_id, download_directory, extract):
        calls.append((dataset_id, extract))
        make_cv_release(Path(download_directory) / "cv-corpus-23.0-2025-09-05", {"train": ["你好"], "test": ["再见"]})
        return Path(download_directory) / "cv-corpus-23.0-2025-09-05"

    monkeypatch.setitem(sys.modules, "datacollective", types.SimpleNamespace(download_dataset=download_dataset))
    source = DataCollective("common-voice-zh-cn-23", str(tmp_path / "mdc"), locale="zh-CN")
    with pytest.raises(FileNotFoundError, match="run `fit`"):
        source.examples("train")
    source.prepare()
    source.prepare()  # already there: no second download
    assert calls == [("common-voice-zh-cn-23", True)]
    assert [e.sentence for e in source.examples("train+test")] == ["你好", "再见"]


def test_data_collective_failure_names_the_key(tmp_path, monkeypatch):
    def download_dataset(*args, **kwargs):
        raise RuntimeError("401 Unauthorized")

    monkeypatch.setitem(sys.modules, "datacollective", types.SimpleNamespace(download_dataset=download_dataset))
    with pytest.raises(RuntimeError, match="MDC_API_KEY"):
        DataCollective("x", str(tmp_path)).prepare()


def test_datamodule_filters_count_skips_and_batches(tiny_model, tmp_path):
    root = make_cv_release(tmp_path, {"train": ["你好", "", "天气很好", "长" * 500, "再见"], "test": ["测试"]})
    clips = root / "zh-CN" / "clips"
    (clips / "common_voice_zh-CN_train_2.mp3").write_bytes(b"corrupt" * 100)  # unreadable
    write_clip(clips / "common_voice_zh-CN_train_4.mp3", seconds=31.0, rate=16_000)  # too long
    dm = WhisperDataModule(
        CommonVoiceFolder(str(root)),
        tiny_model,
        "zh",
        "transcribe",
        "train",
        "test",
        "test",
        batch_size=4,
        num_workers=0,
    )
    dm.setup("fit")
    train = dm.prepared["train"]
    assert [e.sentence for e in train.examples] == ["你好"]
    assert train.skipped == {"empty text": 1, "labels over 448 tokens": 1, "not audio": 1, "audio over 30 s": 1}
    assert "1 clips kept" in train.summary("train")

    (clips / "common_voice_zh-CN_train_0.mp3").unlink()  # vanishes after filtering: skipped in the worker
    assert dm.dataset("train")[0] == {"index": 0, "id": "common_voice_zh-CN_train_0.mp3", "skip": "missing file"}
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_features"].shape == (1, 80, 3000)
    tokenizer = dm.processor.tokenizer
    assert tokenizer.convert_ids_to_tokens(batch["labels"][0, :3].tolist()) == [
        "<|zh|>",
        "<|transcribe|>",
        "<|notimestamps|>",
    ]
    assert tokenizer.decode(batch["labels"][0], skip_special_tokens=True) == "测试"


def test_datamodule_max_samples_and_eval_sorted_by_duration(tiny_model, cv_release):
    dm = WhisperDataModule(
        CommonVoiceFolder(str(cv_release)),
        tiny_model,
        train_split="train+dev",
        val_split="train",
        max_train_samples=3,
        max_eval_samples=4,
        num_workers=0,
    )
    dm.setup("fit")
    assert len(dm.prepared["train"].examples) == 3
    seconds = [round(audio_duration(e.audio), 2) for e in dm.prepared["val"].examples]
    assert seconds == [1.5, 1.25, 1.0, 1.0]  # longest first: similar budgets in a batch


def test_every_clip_skipped_is_an_error(tiny_model, tmp_path):
    root = make_cv_release(tmp_path, {"train": ["", " "]})
    dm = WhisperDataModule(CommonVoiceFolder(str(root)), tiny_model, train_split="train", val_split=None, num_workers=0)
    with pytest.raises(ValueError, match="every clip of split 'train' was skipped"):
        dm.setup("fit")
