"""DDP on CPU (gloo): two processes launched by the real command line, the int8 base on each rank."""

import csv
import json
from pathlib import Path

import pytest
import soundfile as sf
import torch

from tests.conftest import REPO, make_cv_release, train_py
from tests.test_evalsets import sentences_with_pauses

TINY = str(REPO / "configs" / "tiny-cpu.yaml")


#: the evaluation sets' figures compared between 2 ranks and 1 (data.eval_sets of eval_sets() below)
SET_KEYS = ("val/odd/cer", "val/odd/clips", "val/talks/cer", "val/talks/files", "val/talks/cue_start_median",
            "val/talks/cue_end_p90", "val/talks/cues_per_segment")  # fmt: skip


def validation_metrics(folder: Path, keys: tuple[str, ...] = ()) -> dict[str, float]:
    (path,) = folder.glob("**/metrics.csv")
    with path.open() as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val/cer")]
    return {key: float(rows[-1][key]) for key in ("val/cer", "val/wer", *keys)}


def eval_sets(corpus: Path, folder: Path) -> str:
    """The corpus's seven test clips as a clip set, and three long files (tones with pauses) as a long set."""
    clips = sorted((corpus / "zh-CN" / "clips").glob("*test*"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "odd.jsonl").write_text("".join(json.dumps({"audio": str(c), "text": "明天见"}) + "\n" for c in clips))
    rows = []
    for n in range(3):
        wave, spans = sentences_with_pauses([1.0 + 0.5 * n, 1.0], [0.6 + 0.2 * n])
        sf.write(folder / f"talk{n}.wav", wave, 16_000)
        segments = [{"start": a, "end": b, "text": t} for (a, b), t in zip(spans, "甲乙", strict=True)]
        rows.append({"audio": f"talk{n}.wav", "segments": segments})
    (folder / "talks.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return json.dumps(
        {
            "odd": {"manifest": str(folder / "odd.jsonl")},
            "talks": {"manifest": str(folder / "talks.jsonl"), "kind": "long", "speech": "energy"},
        }
    )


@pytest.fixture(scope="module")
def odd_corpus(tmp_path_factory) -> Path:
    """Seven evaluation clips: 2 ranks cannot split them evenly, which is where a padding sampler repeats one."""
    sentences = ["今天天气很好", "我们去公园", "这是测试", "请关门", "他喝茶", "明天见", "周末去学校"]
    return make_cv_release(tmp_path_factory.mktemp("odd"), {"train": sentences[:4], "test": sentences})


def common(tiny_model, corpus, folder) -> list[str]:
    return [
        "--config",
        TINY,
        f"--model.model_name={tiny_model}",
        f"--data.source.init_args.root={corpus}",
        "--data.train_split=train",
        "--data.val_split=test",
        "--data.eval_batch_size=1",  # int8 outlier columns depend on the batch: compare clip by clip
        "--trainer.limit_val_batches=1.0",
        "--trainer.logger=CSVLogger",
        f"--trainer.logger.save_dir={folder}",
        f"--trainer.default_root_dir={folder}",
    ]


def test_fit_with_ddp_on_two_processes_validates_as_one_process_does(tiny_model, odd_corpus, tmp_path):
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    sets = f"--data.eval_sets={eval_sets(odd_corpus, tmp_path / 'sets')}"
    result = train_py(
        "fit", *common(tiny_model, odd_corpus, tmp_path / "run"), *ddp, "--trainer.max_steps=2", sets, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in output
    # 4 training clips, 2 ranks, batch 2: each rank sees one batch per epoch, so 2 steps take 2 epochs
    (checkpoint,) = (tmp_path / "run").glob("**/checkpoints/*.ckpt")
    assert "epoch=1-step=2" in checkpoint.name
    state = torch.load(checkpoint, weights_only=False)
    assert len(state["state_dict"]) == 24 and len(state["rng_states"]) == 2
    (records,) = (tmp_path / "run").glob("**/predictions/val-step2.jsonl")  # gathered from both ranks, written once
    ids = [json.loads(line)["id"] for line in records.read_text(encoding="utf-8").splitlines()]
    assert len(ids) == 7 and len(set(ids)) == 7
    (records,) = (tmp_path / "run").glob("**/predictions/odd-val-step2.jsonl")  # the clip set, gathered once
    set_ids = [Path(json.loads(line)["id"]).name for line in records.read_text(encoding="utf-8").splitlines()]
    assert sorted(set_ids) == sorted(ids)

    # the same weights validated by one process: a sampler that repeated a clip on the 2 ranks would differ
    one = train_py(
        "validate", *common(tiny_model, odd_corpus, tmp_path / "one"), f"--ckpt_path={checkpoint}", sets, cwd=tmp_path
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two_ranks = validation_metrics(tmp_path / "run", SET_KEYS)
    assert two_ranks == pytest.approx(validation_metrics(tmp_path / "one", SET_KEYS), abs=1e-6)
    assert (two_ranks["val/odd/clips"], two_ranks["val/talks/files"]) == (7, 3)


@pytest.fixture(scope="module")
def eight_clips(tmp_path_factory) -> Path:
    """Eight training clips: on 2 ranks in batches of 2, an epoch is 2 steps."""
    sentences = ["今天天气很好", "我们去公园", "这是测试", "请关门", "他喝茶", "明天见", "周末去学校", "下雨了"]
    return make_cv_release(tmp_path_factory.mktemp("eight"), {"train": sentences, "test": sentences[:2]})


def ddp_fit(tiny_model, corpus, folder: Path, *extra: str, devices: int = 2):
    """A DDP fit through train.py, saving last.ckpt in ``folder/checkpoints`` (on exceptions too)."""
    checkpointing = folder / "checkpointing.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    checkpointing.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        f"      init_args: {{dirpath: {folder / 'checkpoints'}, save_last: true}}\n"
    )
    args = [*common(tiny_model, corpus, folder), "--config", str(checkpointing), "--trainer.limit_val_batches=0"]
    ddp = ["--trainer.strategy=ddp", f"--trainer.devices={devices}", "--trainer.accelerator=cpu"]
    result = train_py("fit", *args, *(ddp if devices > 1 else []), *extra, cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def step_losses(folder: Path) -> dict[int, float]:
    (path,) = folder.glob("**/metrics.csv")
    with path.open() as handle:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")}


def lora(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def test_ddp_resume_mid_epoch_continues_exactly_and_another_world_size_warns(tiny_model, eight_clips, tmp_path):
    ddp_fit(tiny_model, eight_clips, tmp_path / "straight", "--trainer.max_steps=4")
    ddp_fit(tiny_model, eight_clips, tmp_path / "split", "--trainer.max_steps=1")  # inside epoch 0
    ddp_fit(tiny_model, eight_clips, tmp_path / "split", "--trainer.max_steps=4", "--ckpt_path=last")
    whole, split = step_losses(tmp_path / "straight"), {}
    for path in (tmp_path / "split").glob("**/metrics.csv"):  # one log folder per launch
        split |= step_losses(path.parent)
    assert sorted(whole) == [0, 1, 2, 3] and sorted(split) == [0, 1, 2, 3]
    assert split == pytest.approx(whole, abs=1e-6)
    theirs, ours = lora(tmp_path / "straight"), lora(tmp_path / "split")
    assert theirs.keys() == ours.keys() and all(torch.allclose(theirs[k], ours[k], atol=1e-7) for k in theirs)

    # the 2-rank checkpoint resumed by one process: it runs, and says it cannot be exact
    (tmp_path / "one" / "checkpoints").mkdir(parents=True)
    (tmp_path / "one" / "checkpoints" / "last.ckpt").write_bytes(
        (tmp_path / "split/checkpoints/last.ckpt").read_bytes()
    )
    one = ddp_fit(tiny_model, eight_clips, tmp_path / "one", "--trainer.max_steps=5", "--ckpt_path=last", devices=1)
    assert "the checkpoint was written by 2 processes and this run has 1" in one.stderr


def test_a_non_finite_loss_on_one_rank_is_skipped_on_both(tiny_model, eight_clips, tmp_path):
    poison = {"class_path": "tests.test_resume.PoisonBatch", "init_args": {"at": 1, "rank": 1}}
    result = ddp_fit(
        tiny_model,
        eight_clips,
        tmp_path,
        "--trainer.max_steps=2",
        "--model.on_nonfinite_loss=skip",
        f"--trainer.callbacks+={json.dumps(poison)}",
    )
    # rank 1 names its clips; the step is skipped on both ranks together (DDP refuses a None step: no crash, no
    # hang), and its update is dropped whole: the weights are those after step 1 (AdamW would move them on a zero
    # gradient)
    assert "non-finite loss at step 1 (batch 1): the input features of clips ['common_voice" in result.stderr
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert (state["global_step"], state["skipped_steps"]) == (2, 1)
    ddp_fit(tiny_model, eight_clips, tmp_path / "one-step", "--trainer.max_steps=1")
    after_one = lora(tmp_path / "one-step")
    assert all(torch.equal(after_one[k], v) for k, v in state["state_dict"].items())
