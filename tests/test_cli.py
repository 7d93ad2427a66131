import csv
import math
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, tiny_args
from whisper_lora_pl.data.datamodule import WhisperDataModule
from whisper_lora_pl.training.cli import WhisperCLI, main
from whisper_lora_pl.training.module import WhisperLoRA

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


class ParseOnly(WhisperCLI):
    """Parse and type-check a config against the signatures without building a Trainer (GPU configs too)."""

    def instantiate_classes(self) -> None:
        pass


def parse(*args: str):
    return ParseOnly(WhisperLoRA, WhisperDataModule, args=list(args), run=False).config


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    config = parse("--config", str(path))
    assert config.data.model_name == config.model.model_name  # linked, written once
    assert config.data.language == config.model.language


def test_the_recipe_is_the_tutorials():
    config = parse("--config", str(REPO / "configs" / "whisper-large-v2-zh.yaml"))
    model, data = config.model, config.data
    assert (model.model_name, model.language, model.task, model.quantization) == (
        "openai/whisper-large-v2",
        "zh",
        "transcribe",
        "int8",
    )
    assert (model.lora.r, model.lora.alpha, model.lora.dropout) == (8, 64, 0.05)
    assert list(model.lora.target_modules) == ["q_proj", "v_proj"]
    assert model.optimizer.init_args.lr == 1e-3 and model.warmup_steps == 50 and model.max_new_tokens == 128
    # the Seq2SeqTrainer's defaults the tutorial trained with: no weight decay, gradients clipped at norm 1
    assert model.optimizer.init_args.weight_decay == 0.0 and config.trainer.gradient_clip_val == 1.0
    assert (data.train_split, data.val_split, data.batch_size) == ("train+dev", "test", 64)
    assert config.trainer.max_epochs == 1 and config.trainer.precision == "16-mixed"


def test_a_value_may_not_be_written_twice():
    with pytest.raises(SystemExit):  # language lives under model: and is linked into data:
        parse("--config", str(REPO / "configs" / "tiny-cpu.yaml"), "--data.language", "en")


def read_metrics(folder: Path) -> list[dict]:
    (path,) = folder.glob("**/metrics.csv")
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_fit_int8_on_cpu_end_to_end(tiny_model, cv_release, tmp_path):
    """`train.py fit` in-process: the loss on a repeated batch drops, val WER/CER are logged, a checkpoint lands."""
    cli = main(
        [
            "fit",
            *tiny_args(tiny_model, cv_release, tmp_path),
            "--trainer.max_steps=8",
            "--trainer.overfit_batches=1",
            "--trainer.logger=CSVLogger",
            f"--trainer.logger.save_dir={tmp_path}",
        ]
    )
    losses = [float(row["train/loss"]) for row in read_metrics(tmp_path) if row.get("train/loss")]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.25, losses  # measured: 10.84 -> 10.38 in 8 steps
    metrics = cli.trainer.callback_metrics
    assert {"val/wer", "val/cer", "train/loss"} <= set(metrics)
    # a random model cannot transcribe: every one-"word" Chinese sentence is wrong, most characters too
    assert metrics["val/wer"].item() == 1.0 and metrics["val/cer"].item() >= 0.5
    (checkpoint,) = tmp_path.glob("**/checkpoints/*.ckpt")
    state = torch.load(checkpoint, weights_only=False)["state_dict"]
    assert len(state) == 24 and all("lora_" in key for key in state)
    saved = yaml.safe_load(next(tmp_path.glob("**/config.yaml")).read_text())
    assert saved["model"]["model_name"] == tiny_model
