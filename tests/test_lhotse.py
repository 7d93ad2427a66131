"""lhotse corpora: CutSet manifests, Shar shards (written by us, read by us and by lhotse), shard-local streaming
batches under DDP and workers, exact resume from shards, and every fault a counted skip."""

import gzip
import io
import json
import pickle
import shutil
import tarfile
import tracemalloc
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader, get_worker_info

from tests.conftest import REPO, make_cv_release, tone, train_py
from tests.test_resume import AUGMENTED, adapters, checkpointing, losses
from whisper_lora_pl.data.audio import AudioSpan, load_audio
from whisper_lora_pl.data.buckets import Batches
from whisper_lora_pl.data.cutsets import Lhotse, LhotseCut
from whisper_lora_pl.data.evalsets import EvalSet, load_set
from whisper_lora_pl.data.shar import LhotseShar, ShardMember
from whisper_lora_pl.data.shardplan import ShardBatches
from whisper_lora_pl.data.sharwriter import write_shards
from whisper_lora_pl.data.sources import CommonVoiceFolder, Example, whisper_language
from whisper_lora_pl.data.tables import ShardExamples, TokenTable, compact
from whisper_lora_pl.training.cli import main

lhotse = pytest.importorskip("lhotse")  # the [lhotse] extra; .ci/run installs it

TINY = str(REPO / "configs" / "tiny-cpu.yaml")
SPLITS = ("train", "dev", "test")


def recording(path: Path, name: str):
    """A lhotse Recording of a file, from its header (lhotse's own probe would want ffmpeg for mp3)."""
    info = sf.info(str(path))
    source = lhotse.audio.AudioSource(type="file", channels=[0], source=str(path))
    return lhotse.Recording(name, [source], info.samplerate, info.frames, info.frames / info.samplerate)


def lhotse_copy(cv_release: Path, folder: Path) -> dict[str, str]:
    """The Common Voice folder as lhotse prepares a corpus: one ``cuts_<split>.jsonl.gz`` per split."""
    files = {}
    for split in SPLITS:
        cuts = []
        for example in CommonVoiceFolder(str(cv_release)).examples(split):
            rec = recording(Path(example.audio), example.id)
            sup = lhotse.SupervisionSegment(
                example.id, example.id, 0, rec.duration, text=example.sentence, language="zh"
            )
            cuts.append(lhotse.MonoCut(example.id, 0, rec.duration, 0, supervisions=[sup], recording=rec))
        files[split] = str(folder / f"cuts_{split}.jsonl.gz")
        lhotse.CutSet.from_cuts(cuts).to_file(files[split])
    return files


def source_config(folder: Path, class_path: str, init_args: dict) -> str:
    path = folder / f"{class_path.rsplit('.', 1)[1]}.yaml"
    path.write_text(json.dumps({"data": {"source": {"class_path": class_path, "init_args": init_args}}}))
    return str(path)


def run(command: str, model: str, folder: Path, *extra: str):
    return main(
        [
            command,
            "--config",
            TINY,
            f"--model.model_name={model}",
            "--trainer.limit_val_batches=0",
            f"--trainer.default_root_dir={folder}",
            "--trainer.logger=CSVLogger",
            f"--trainer.logger.save_dir={folder}",
            *extra,
        ]
    )


def test_a_lhotse_prepared_corpus_trains_and_tests_as_the_common_voice_folder(tiny_model, cv_release, tmp_path):
    files = lhotse_copy(cv_release, tmp_path)
    configs = {
        "cv": [f"--data.source.init_args.root={cv_release}"],
        "lhotse": ["--config", source_config(tmp_path, "whisper_lora_pl.data.cutsets.Lhotse", {"cuts": files})],
    }
    figures = {}
    for name, source in configs.items():
        folder = tmp_path / name
        shipped = ["--model.encoder_length=dynamic", "--data.num_buckets=2"]  # as the demo trains: buckets, cut encoder
        cli = run("fit", tiny_model, folder, *source, *shipped, "--trainer.max_steps=3", "--data.train_split=train+dev")
        (checkpoint,) = folder.glob("**/checkpoints/*.ckpt")
        tested = run("test", tiny_model, tmp_path / f"{name}-test", *source, *shipped, f"--ckpt_path={checkpoint}")
        metrics = tested.trainer.callback_metrics
        figures[name] = (losses(folder), adapters(cli.model), metrics["test/cer"].item(), metrics["test/clips"].item())
    (cv_losses, cv_adapters, cv_cer, cv_clips), (lh_losses, lh_adapters, lh_cer, lh_clips) = figures.values()
    assert cv_clips == lh_clips == 2
    assert lh_cer == pytest.approx(cv_cer, abs=1e-6)
    assert lh_losses == pytest.approx(cv_losses, abs=1e-6) and len(cv_losses) == 3
    assert all(torch.allclose(cv_adapters[k], lh_adapters[k], atol=1e-7) for k in cv_adapters)


def test_recordings_and_supervisions_give_a_clip_per_supervision_or_per_cut(tmp_path):
    rate = 16_000
    wave = np.concatenate([tone(1.0, rate, freq=300), tone(0.5, rate, freq=600), tone(1.5, rate, freq=900)]).ravel()
    sf.write(tmp_path / "long.wav", wave, rate, subtype="FLOAT")
    rec = recording(tmp_path / "long.wav", "long")
    segments = [(0.0, 1.0, "第一句", "zh"), (1.5, 1.5, "第二句", "zh")]
    sups = [
        lhotse.SupervisionSegment(f"s{i}", "long", s, d, text=t, language=lang)
        for i, (s, d, t, lang) in enumerate(segments)
    ]
    lhotse.RecordingSet.from_recordings([rec]).to_file(tmp_path / "recordings.jsonl.gz")
    lhotse.SupervisionSet.from_segments(sups).to_file(tmp_path / "supervisions.jsonl.gz")
    manifests = {"recordings": {"train": str(tmp_path / "recordings.jsonl.gz")}}
    manifests["supervisions"] = {"train": str(tmp_path / "supervisions.jsonl.gz")}

    each = Lhotse(**manifests, clips="supervision").examples("train")
    assert [e.sentence for e in each] == ["第一句", "第二句"] and [e.duration for e in each] == [1.0, 1.5]
    assert all(isinstance(e.audio, AudioSpan) for e in each)
    np.testing.assert_array_equal(load_audio(each[1].audio), wave[int(1.5 * rate) :])  # only its stretch is read

    (whole,) = Lhotse(**manifests, clips="cut", join_with="").examples("train")
    assert whole.sentence == "第一句第二句" and whole.audio == str(tmp_path / "long.wav") and whole.language == "zh"


def test_a_cut_whose_audio_lhotse_fetches_is_decoded_by_lhotse(tmp_path):
    rate = 16_000
    wave = tone(1.0, rate).ravel()
    sf.write(tmp_path / "clip.wav", wave, rate, subtype="PCM_16")
    source = lhotse.audio.AudioSource(type="command", channels=[0], source=f"cat {tmp_path / 'clip.wav'}")
    rec = lhotse.Recording("piped", [source], rate, len(wave), 1.0)
    sup = lhotse.SupervisionSegment("s", "piped", 0, 1.0, text="你好")
    lhotse.CutSet.from_cuts([lhotse.MonoCut("c", 0, 1.0, 0, supervisions=[sup], recording=rec)]).to_file(
        tmp_path / "cuts.jsonl.gz"
    )
    (example,) = Lhotse(cuts={"train": str(tmp_path / "cuts.jsonl.gz")}).examples("train")
    assert isinstance(example.audio, LhotseCut) and example.duration == 1.0
    np.testing.assert_allclose(load_audio(example.audio), wave, atol=2**-15)


@pytest.mark.parametrize("audio", ["flac", "original"])
def test_written_shards_hold_the_same_clips_texts_and_samples(cv_release, tmp_path, audio):
    examples = CommonVoiceFolder(str(cv_release)).examples("train+dev")
    shards, skipped = write_shards(examples, tmp_path / "shards", shard_size=3, audio=audio)
    assert len(shards) == 2 and not skipped  # 6 clips, 3 a shard
    back = LhotseShar({"train": str(tmp_path / "shards")}).examples("train")
    assert [e.sentence for e in back] == [e.sentence for e in examples]
    assert [e.audio.shard for e in back] == [0, 0, 0, 1, 1, 1]
    for ours, theirs in zip(examples, back, strict=True):
        # the original bytes decode to the very samples; FLAC holds what the run decodes, to 16-bit precision
        tolerance = 0 if audio == "original" else 2**-15
        np.testing.assert_allclose(load_audio(theirs.audio), load_audio(ours.audio), atol=tolerance, rtol=0)
        assert theirs.duration == pytest.approx(len(load_audio(ours.audio)) / 16_000, abs=1e-3)
    # the same shards at an fsspec URL: the same clips, read by range
    by_url = LhotseShar({"train": f"file://{tmp_path / 'shards'}"}).examples("train")
    assert [e.audio.tar.startswith("file://") for e in by_url] == [True] * len(back)
    assert [(e.id, e.sentence, e.audio.offset, e.audio.read()) for e in by_url] == [
        (e.id, e.sentence, e.audio.offset, e.audio.read()) for e in back
    ]
    # lhotse itself reads what we write
    cuts = list(lhotse.CutSet.from_shar(in_dir=str(tmp_path / "shards")))
    assert [c.supervisions[0].text for c in cuts] == [e.sentence for e in examples]
    assert cuts[0].load_audio().shape[1] == sf.info(io.BytesIO(back[0].audio.read())).frames


def test_shards_lhotse_writes_are_read(cv_release, tmp_path):
    files = lhotse_copy(cv_release, tmp_path)
    cuts = lhotse.CutSet.from_file(files["train"])
    (tmp_path / "shar").mkdir()
    cuts.to_shar(str(tmp_path / "shar"), fields={"recording": "flac"}, shard_size=2)
    back = LhotseShar({"train": str(tmp_path / "shar")}).examples("train")
    assert [e.sentence for e in back] == [c.supervisions[0].text for c in cuts]
    assert [e.id for e in back] == [c.id for c in cuts] and [e.audio.shard for e in back] == [0, 0, 1, 1]
    for cut, example in zip(cuts, back, strict=True):
        np.testing.assert_allclose(load_audio(example.audio), load_audio(cut.recording.sources[0].source), atol=2**-14)


@pytest.mark.parametrize(
    ("sizes", "batch_seconds"),
    [([8] * 8, None), ([7, 9, 8, 8, 6, 10, 8, 8], None), ([8] * 8, 6.0)],
    ids=["even-shards", "uneven-shards", "batch-seconds"],
)
def test_two_ranks_of_two_workers_read_their_own_shards_and_every_clip_once(sizes, batch_seconds):
    shards = np.repeat(np.arange(len(sizes)), sizes).tolist()
    durations = np.random.default_rng(0).uniform(1.0, 6.0, len(shards)).tolist()
    dealt = []
    for epoch in (0, 1):
        seen, steps, readers = [], [], {}
        for rank in (0, 1):
            sampler = ShardBatches(
                shards, durations, 4, batch_seconds=batch_seconds, window=12, num_workers=2, num_replicas=2,
                rank=rank, seed=3, current_epoch=lambda e=epoch: e,
            )  # fmt: skip
            batches = list(DataLoader(Batches(_Reader()), sampler=sampler, batch_size=None, num_workers=2))
            steps.append(len(batches))
            for batch in batches:
                seen += [index for index, _ in batch]
                for index, worker in batch:  # which worker process read the clip
                    readers.setdefault((rank, worker), set()).add(shards[index])
                longest = max(durations[i] for i, _ in batch)
                assert len(batch) <= 4 and (not batch_seconds or len(batch) * longest <= batch_seconds)
        assert steps[0] == steps[1]  # ranks in step
        shard_sets = list(readers.values())
        assert len(shard_sets) == 4 and sum(map(len, shard_sets)) == len(sizes), readers  # each shard one reader
        assert set(seen) == set(range(len(shards)))  # every clip comes
        if sizes == [8] * 8 and not batch_seconds:  # 16 clips a worker: 4 batches each, nothing repeated
            assert sorted(seen) == list(range(len(shards)))
        else:  # a worker short of batches repeats some: at most about a shard's worth
            assert len(seen) - len(shards) <= 2 * max(sizes)
        dealt.append(sorted(map(sorted, shard_sets)))
    assert dealt[0] != dealt[1]  # the shards go elsewhere each epoch


class _Reader(torch.utils.data.Dataset):
    """Each clip's index and the worker that read it."""

    def __getitem__(self, index: int) -> tuple[int, int]:
        return index, get_worker_info().id

    def __len__(self) -> int:
        return 64


@pytest.mark.parametrize("augment", [(), AUGMENTED], ids=["plain", "augmented"])
def test_a_resumed_run_over_shards_takes_the_unbroken_runs_batches(tiny_model, cv_release, tmp_path, augment):
    """8 clips in shards of 2, batches of 2 from 2 workers: an epoch is 4 steps; stopped after 3, resumed to 6."""
    examples = CommonVoiceFolder(str(cv_release)).examples("train+dev+test")
    write_shards(examples, tmp_path / "shards", shard_size=2)
    source = [
        "--config",
        source_config(
            tmp_path, "whisper_lora_pl.data.shar.LhotseShar", {"splits": {"train": str(tmp_path / "shards")}}
        ),
    ]

    def fit(folder: Path, *extra: str):
        return run(
            "fit", tiny_model, folder, *source, "--config", str(checkpointing(folder.parent)),
            "--data.train_split=train", "--data.val_split=null", "--data.num_workers=2", *augment, *extra,
        )  # fmt: skip

    straight = fit(tmp_path / "straight" / "run", "--trainer.max_steps=6")
    fit(tmp_path / "split" / "first", "--trainer.max_steps=3")
    resumed = fit(tmp_path / "split" / "second", "--trainer.max_steps=6", "--ckpt_path=last")
    whole, first, second = (losses(tmp_path / d) for d in ("straight/run", "split/first", "split/second"))
    assert sorted(whole) == [0, 1, 2, 3, 4, 5] and sorted(first) == [0, 1, 2] and sorted(second) == [3, 4, 5]
    assert {**first, **second} == pytest.approx(whole, abs=1e-6)
    theirs, ours = adapters(straight.model), adapters(resumed.model)
    assert all(torch.allclose(theirs[k], ours[k], atol=1e-7) for k in theirs)
    assert isinstance(resumed.datamodule.prepared["train"].examples[0].audio, ShardMember)


def corrupt_shards(cv_release: Path, folder: Path) -> Path:
    """Shards of 2 clips: shard 0 with a clip said to be English, shard 1 with a member's bytes overwritten, shard 2's
    tar gone, shard 3 with a cut without text and a line that is not JSON."""
    examples = CommonVoiceFolder(str(cv_release)).examples("train+dev+test")
    write_shards(examples, folder, shard_size=2)
    tar = folder / "recording.000001.tar"
    with tarfile.open(tar) as archive:
        first = archive.getmembers()[0]
    data = bytearray(tar.read_bytes())
    data[first.offset_data : first.offset_data + first.size] = b"\x00" * first.size
    tar.write_bytes(bytes(data))
    (folder / "recording.000002.tar").unlink()
    cuts = folder / "cuts.000000.jsonl.gz"
    rows = [json.loads(r) for r in gzip.decompress(cuts.read_bytes()).decode().splitlines()]
    rows[1]["supervisions"][0]["language"] = "English"
    cuts.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    cuts = folder / "cuts.000003.jsonl.gz"
    rows = gzip.decompress(cuts.read_bytes()).decode().splitlines()
    row = json.loads(rows[0])
    row["supervisions"][0]["text"] = ""
    cuts.write_bytes(gzip.compress(("\n".join([json.dumps(row), rows[1], "{not json"]) + "\n").encode()))
    return folder


def test_faults_in_shards_are_counted_skips_that_name_the_shard(tiny_model, cv_release, tmp_path, caplog):
    folder = corrupt_shards(cv_release, tmp_path / "shards")
    source = source_config(tmp_path, "whisper_lora_pl.data.shar.LhotseShar", {"splits": {"train": str(folder)}})
    cli = run("fit", tiny_model, tmp_path / "run", "--config", source, "--data.train_split=train",
              "--data.val_split=null", "--trainer.max_steps=10", "--trainer.max_epochs=1")  # fmt: skip
    skipped = cli.datamodule.prepared["train"].skipped
    assert skipped == {"missing shard": 2, "empty text": 1, "malformed row": 1, "language 'English', not 'zh'": 1}
    assert "recording.000002.tar does not exist" in caplog.text and "cuts.000003.jsonl.gz:3" in caplog.text
    # the zeroed member is found when it is decoded: a counted skip of the epoch, named; the other 3 clips trained on
    metrics = cli.trainer.callback_metrics
    assert (metrics["train/clips"].item(), metrics["train/skipped_clips"].item()) == (3, 1)
    assert "recording.000001.tar:" in caplog.text and "is not audio" in caplog.text


def test_clips_in_another_language_are_counted_skips():
    assert [whisper_language(x) for x in ["Chinese", "zh-CN", "cmn", "Mandarin", "en", "English", "xx"]] == [
        "zh", "zh", "zh", "zh", "en", "en", None,
    ]  # fmt: skip


def test_a_missing_shard_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Shar shards"):
        LhotseShar({"train": str(tmp_path / "nowhere")}).examples("train")
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_evaluation_sets_may_be_shards_or_a_cuts_manifest(cv_release, tmp_path):
    examples = CommonVoiceFolder(str(cv_release)).examples("test")
    write_shards(examples, tmp_path / "shards", shard_size=1)
    files = lhotse_copy(cv_release, tmp_path)
    rows = [{"audio": e.audio, "text": e.sentence} for e in examples]
    (tmp_path / "ours.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    loaded = {
        kind: load_set(kind, EvalSet(manifest=str(path)), 30.0)
        for kind, path in [("ours", tmp_path / "ours.jsonl"), ("shar", tmp_path / "shards"), ("cuts", files["test"])]
    }
    for kind, one in loaded.items():
        assert [c.sentence for c in one.clips] == [e.sentence for e in examples], kind
        assert one.durations == pytest.approx(loaded["ours"].durations, abs=1e-3), kind
        assert all(
            np.allclose(load_audio(a.audio), load_audio(b.audio), atol=2**-15)
            for a, b in zip(one.clips, examples, strict=True)
        )


def test_packed_windows_train_from_shards(tiny_model, cv_release, tmp_path):
    examples = CommonVoiceFolder(str(cv_release)).examples("train+dev+test")
    write_shards(examples, tmp_path / "shards", shard_size=2)
    source = source_config(
        tmp_path, "whisper_lora_pl.data.shar.LhotseShar", {"splits": {"train": str(tmp_path / "shards")}}
    )
    cli = run("fit", tiny_model, tmp_path / "run", "--config", source, "--data.train_split=train",
              "--data.val_split=null", "--data.pack_windows=true", "--data.timestamp_share=0.5",
              "--trainer.max_epochs=1", "--trainer.max_steps=10")  # fmt: skip
    metrics = cli.trainer.callback_metrics
    assert (metrics["train/clips"].item(), metrics["train/skipped_clips"].item()) == (8, 0)


def held(*things) -> int:
    """Bytes a worker holds once it has unpickled ``things``."""
    data = pickle.dumps(things)
    tracemalloc.start()
    try:
        loaded = pickle.loads(data)
        return tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        del loaded


def test_a_split_in_shards_is_held_in_columns():
    """What the main process and each worker hold: the same examples and labels, in a fraction of the bytes."""
    examples = [
        Example(
            ShardMember(f"s3://b/train/recording.{i // 1000:06d}.tar", 512 + 1024 * i, 900, f"cv_{i}.flac", i // 1000),
            "今天天气很好" * (1 + i % 3),
            f"cv_{i}",
            duration=1.0 + (i % 50) / 10,
            language="zh" if i % 2 else None,
        )
        for i in range(5000)
    ]  # fmt: skip
    labels = [list(range(50257, 50260)) + [i % 51865] * (3 + i % 20) for i in range(5000)]
    table, tokens = compact(examples), TokenTable(labels)
    assert isinstance(table, ShardExamples) and list(table) == examples and table[4321] == examples[4321]
    assert list(tokens) == labels and tokens.lengths().tolist() == [len(ids) for ids in labels]
    columns, objects = held(table, tokens) / 5000, held(examples, labels) / 5000
    assert columns < 200 and columns < objects / 4, (columns, objects)  # measured: 166 and 1,420 bytes a clip
    mixed = [*examples[:1], Example("a.wav", "x", "a")]
    assert compact(mixed) is mixed  # not all in shards: kept as they are


class RecordClips(L.Callback):
    """Writes each training step's clip ids, per rank, to ``folder/rank<r>.jsonl``."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with (self.folder / f"rank{trainer.global_rank}.jsonl").open("a") as handle:
            handle.write(json.dumps({"step": trainer.global_step, "ids": list(batch["id"])}) + "\n")


def steps_taken(folder: Path) -> dict[int, dict[int, list[str]]]:
    """rank -> step -> clip ids."""
    return {
        int(path.stem[4:]): {row["step"]: row["ids"] for row in map(json.loads, path.read_text().splitlines())}
        for path in folder.glob("rank*.jsonl")
    }


@pytest.mark.slow
def test_two_ranks_of_two_workers_train_on_every_clip_once_and_resume_exactly(tiny_model, tmp_path):
    """16 clips in 8 shards of 2 on 2 ranks of 2 workers: each worker reads 2 shards (2 batches of 2), an epoch is 4
    steps; one run straight to step 4, one stopped after step 2 and resumed."""
    sentences = ["今天天气很好", "我们去公园", "这是测试", "请关门", "他喝茶", "明天见", "周末去学校", "下雨了"]
    corpus = make_cv_release(tmp_path / "cv", {"train": sentences + [s + "吗" for s in sentences]})
    write_shards(CommonVoiceFolder(str(corpus)).examples("train"), tmp_path / "shards", shard_size=2)
    source = {"splits": {"train": str(tmp_path / "shards")}}
    shar = source_config(tmp_path, "whisper_lora_pl.data.shar.LhotseShar", source)

    def fit(folder: Path, *extra: str) -> None:
        record = {"class_path": "tests.test_lhotse.RecordClips", "init_args": {"folder": str(folder)}}
        result = train_py(
            "fit", "--config", TINY, "--config", shar, "--config", str(checkpointing(folder)),
            f"--model.model_name={tiny_model}", "--data.train_split=train", "--data.val_split=null",
            "--data.num_workers=2", "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
            "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={folder}", f"--trainer.default_root_dir={folder}",
            f"--trainer.callbacks+={json.dumps(record)}", *extra, cwd=folder,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]

    fit(tmp_path / "straight", "--trainer.max_steps=4")
    straight = steps_taken(tmp_path / "straight")
    assert sorted(straight) == [0, 1] and all(sorted(steps) == [0, 1, 2, 3] for steps in straight.values())
    ids = sorted(clip for steps in straight.values() for batch in steps.values() for clip in batch)
    assert len(ids) == 16 and len(set(ids)) == 16  # every clip once in the epoch, over both ranks

    fit(tmp_path / "split", "--trainer.max_steps=2")
    fit(tmp_path / "split", "--trainer.max_steps=4", "--ckpt_path=last")
    assert steps_taken(tmp_path / "split") == straight  # each rank's batches, step by step
    whole, split = losses(tmp_path / "straight"), {}
    for path in (tmp_path / "split").glob("**/metrics.csv"):  # one log folder per launch
        split |= losses(path.parent)
    assert split == pytest.approx(whole, abs=1e-6) and sorted(whole) == [0, 1, 2, 3]
    theirs, ours = (
        torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        for run in ("straight", "split")
    )
    assert all(torch.allclose(theirs[k], ours[k], atol=1e-7) for k in theirs)
