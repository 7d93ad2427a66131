"""The README's guarantees at the settings users run: ``configs/demo.yaml`` itself (dynamic encoder, a fifth of the
steps on the full window, 10 duration buckets, 2 DataLoader workers, evaluation batches of 16, the loop guard's
temperature ladder), with only the model, the corpus and the run's folder swapped for tiny ones."""

import csv
import json
import os
import signal
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from tests.conftest import REPO, make_cv_release, train_py
from whisper_lora_pl.training.module import FULL_WINDOW_STREAM as FULL_WINDOW

DEMO = str(REPO / "configs" / "demo.yaml")
OTHER_SPEECH = REPO / "data" / "demo-other-speech" / "en.jsonl"
#: 40 training clips and 10 of the shipped other speech (share 0.2) in batches of 2: 10 buckets of 5 clips, 30 steps
#: an epoch, preempted after step 5
TRAIN, TEST, BATCH, STEPS, STOP = 40, 7, 2, 30, 5
SENTENCES = [
    "今天天气很好",
    "我们去公园散步",
    "这是一个测试",
    "请把门关上",
    "他喜欢喝茶",
    "明天见",
    "周末去学校",
    "下雨了",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Clips of 1 to 1.5 s (the fixture's lengths) and 7 test clips: 2 ranks cannot split them evenly."""
    train = [SENTENCES[i % len(SENTENCES)] * (1 + i % 3) for i in range(TRAIN)]
    return make_cv_release(tmp_path_factory.mktemp("shipped"), {"train": train, "test": SENTENCES[:TEST]})


def demo(tiny_model: str, corpus: Path, folder: Path, *extra: str) -> list[str]:
    """``--config configs/demo.yaml`` as shipped, with a tiny model and corpus, logging to CSV in ``folder``."""
    return [
        "--config",
        DEMO,
        f"--model.model_name={tiny_model}",
        f"--data.source.init_args.root={corpus}",
        "--data.eval_sets=null",  # the demo's sets are read from the repository (tests/test_ddp.py runs sets)
        f"--data.other_speech.manifest={OTHER_SPEECH}",  # the shipped share of the repository's English clips
        f"--data.batch_size={BATCH}",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.log_every_n_steps=1",  # every step's loss in metrics.csv
        "--trainer.logger=CSVLogger",
        f"--trainer.logger.save_dir={folder}",
        *extra,
    ]


class PreemptAt(L.Callback):
    """SIGTERM to the run itself after step ``step``, as a cluster's preemption: the demo's ``save_on_exception``
    then writes last.ckpt mid-epoch, and the run exits (143)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class RecordBatches(L.Callback):
    """Appends each step's clips to ``path`` (JSONL): a resumed run's batches can be compared with the unbroken's."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: dict, *args) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": trainer.global_step, "ids": list(batch["id"])}) + "\n")


def fit(tiny_model: str, corpus: Path, cwd: Path, log: str, *extra: str, code: int = 0) -> None:
    """One epoch in ``cwd`` (the demo's checkpoints land in cwd/runs/demo/checkpoints), no validation."""
    cwd.mkdir(parents=True, exist_ok=True)
    args = demo(tiny_model, corpus, cwd / log, "--trainer.limit_val_batches=0", *extra)
    result = train_py("fit", *args, cwd=cwd)
    assert result.returncode == code, result.stderr[-3000:]


def losses(folder: Path) -> dict[int, float]:
    (path,) = folder.glob("**/metrics.csv")
    with path.open() as handle:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")}


def adapters(cwd: Path) -> dict[str, torch.Tensor]:
    return torch.load(cwd / "runs/demo/checkpoints/last.ckpt", weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def straight(tiny_model, corpus, tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("straight")
    fit(tiny_model, corpus, cwd, "log")
    return cwd


def test_the_demo_config_resumes_mid_epoch_exactly(tiny_model, corpus, straight, tmp_path):
    """Preempted at step 5 of its 30-step epoch and resumed: the loss of every step and the adapters are the
    unbroken run's. The shipped settings are really in play: 10 buckets, 2 workers, full-window steps after the
    stop (the draw of ``module._full_window_step``)."""
    config = yaml.safe_load(Path(DEMO).read_text())
    assert config["data"]["num_buckets"] == 10 and config["data"]["num_workers"] == 2
    assert config["model"]["encoder_length"] == "dynamic" and config["model"]["encoder_full_share"] == 0.2
    assert config["data"]["other_speech"]["share"] == 0.2
    seed = config["seed_everything"]
    full = [s for s in range(STEPS) if np.random.default_rng([seed, s, FULL_WINDOW]).random() < 0.2]
    assert full and min(full) > STOP
    preempt = {"class_path": "tests.test_shipped.PreemptAt", "init_args": {"step": STOP}}
    fit(tiny_model, corpus, tmp_path, "first", f"--trainer.callbacks+={json.dumps(preempt)}", code=143)
    assert torch.load(tmp_path / "runs/demo/checkpoints/last.ckpt", weights_only=False)["global_step"] == STOP
    fit(tiny_model, corpus, tmp_path, "second", "--ckpt_path=last")
    whole, first, second = losses(straight / "log"), losses(tmp_path / "first"), losses(tmp_path / "second")
    assert sorted(whole) == list(range(STEPS)) and sorted(first) + sorted(second) == list(range(STEPS))
    assert {**first, **second} == pytest.approx(whole, abs=1e-6)
    theirs, ours = adapters(straight), adapters(tmp_path)
    assert theirs.keys() == ours.keys() and all(torch.allclose(theirs[k], ours[k], atol=1e-7) for k in theirs)


def validated(tiny_model: str, corpus: Path, checkpoint: Path, cwd: Path, *extra: str) -> tuple[dict, dict]:
    """``train.py validate`` of ``checkpoint`` on the 7 test clips: (the logged metrics, each clip's text)."""
    cwd.mkdir(parents=True, exist_ok=True)
    result = train_py("validate", *demo(tiny_model, corpus, cwd), f"--ckpt_path={checkpoint}", *extra, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = cwd.glob("**/metrics.csv")
    with path.open() as handle:
        (row,) = [r for r in csv.DictReader(handle) if r.get("val/cer")]
    (records,) = cwd.glob("**/predictions/val-step*.jsonl")
    texts = [json.loads(line) for line in records.read_text(encoding="utf-8").splitlines()]
    assert len(texts) == len({r["id"] for r in texts})  # each clip once
    return {k: float(v) for k, v in row.items() if k.startswith("val/") and v}, {
        r["id"]: r["hypothesis"] for r in texts
    }


def test_the_demo_config_evaluates_on_two_ranks_exactly_as_on_one(tiny_model, corpus, straight, tmp_path):
    """DDP validation at the configured evaluation batch (16) with the merged model and the dynamic encoder: the
    metrics and every clip's text equal one process's (7 clips: a sampler that repeats one to even the ranks, or a
    text that depends on the clips beside it, would differ)."""
    checkpoint = straight / "runs/demo/checkpoints/last.ckpt"
    one, one_texts = validated(tiny_model, corpus, checkpoint, tmp_path / "one")
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2"]
    two, two_texts = validated(tiny_model, corpus, checkpoint, tmp_path / "two", *ddp)
    assert one["val/clips"] == two["val/clips"] == TEST and len(one_texts) == TEST
    assert two_texts == one_texts
    assert two == pytest.approx(one, abs=1e-6)
    assert one["val/retried"] > 0  # the loop guard sampled: the texts of sampled attempts are compared too
