"""DDP on CPU (gloo): two processes launched by the real command line, the int8 base on each rank."""

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, make_cv_release, train_py

TINY = str(REPO / "configs" / "tiny-cpu.yaml")


def validation_metrics(folder: Path) -> dict[str, float]:
    (path,) = folder.glob("**/metrics.csv")
    with path.open() as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val/cer")]
    return {key: float(rows[-1][key]) for key in ("val/cer", "val/wer")}


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
    result = train_py(
        "fit", *common(tiny_model, odd_corpus, tmp_path / "run"), *ddp, "--trainer.max_steps=2", cwd=tmp_path
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

    # the same weights validated by one process: a sampler that repeated a clip on the 2 ranks would differ
    one = train_py(
        "validate", *common(tiny_model, odd_corpus, tmp_path / "one"), f"--ckpt_path={checkpoint}", cwd=tmp_path
    )
    assert one.returncode == 0, one.stderr[-3000:]
    assert validation_metrics(tmp_path / "run") == pytest.approx(validation_metrics(tmp_path / "one"), abs=1e-6)
