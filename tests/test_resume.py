"""Adapter-only checkpoints, exact resume (mid-epoch included), atomic writes, non-finite losses."""

import csv
import signal
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import REPO, train_py
from whisper_lora_pl.data.datamodule import WhisperDataModule
from whisper_lora_pl.data.sources import CommonVoiceFolder
from whisper_lora_pl.training.checkpoints import atomic_torch_save
from whisper_lora_pl.training.cli import main
from whisper_lora_pl.training.module import WhisperLoRA

TINY = str(REPO / "configs" / "tiny-cpu.yaml")


def checkpointing(folder: Path, every_n_epochs: int = 1, name: str = "checkpointing.yaml") -> Path:
    """A second --config: last.ckpt in a fixed folder, written on exceptions too, as the shipped configs do."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(
        f"""trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {folder / "checkpoints"}, save_last: true, save_on_exception: true,
                  every_n_epochs: {every_n_epochs}}}
"""
    )
    return path


def fit(tiny_model, cv_release, folder: Path, *extra: str):
    """Training on 8 clips in batches of 2: an epoch is 4 steps."""
    return main(
        [
            "fit",
            "--config",
            TINY,
            "--config",
            str(checkpointing(folder.parent)),
            f"--model.model_name={tiny_model}",
            f"--data.source.init_args.root={cv_release}",
            "--data.train_split=train+dev+test",
            "--trainer.limit_val_batches=0",
            f"--trainer.default_root_dir={folder}",
            "--trainer.logger=CSVLogger",
            f"--trainer.logger.save_dir={folder}",
            *extra,
        ]
    )


def losses(folder: Path) -> dict[int, float]:
    (path,) = folder.glob("**/metrics.csv")
    with path.open() as handle:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")}


def adapters(module: WhisperLoRA) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if "lora_" in k}


#: every augmentation on, each clip more likely changed than not (tests/test_augment.py checks what each does)
AUGMENTED = (
    "--data.augment.speed_prob=0.7",
    "--data.augment.noise_prob=0.7",
    "--data.augment.gain_prob=0.7",
    "--model.spec_augment.mask_time_prob=0.3",
    "--model.spec_augment.mask_feature_prob=0.3",
)


@pytest.mark.parametrize("augment", [(), AUGMENTED], ids=["plain", "augmented"])
def test_resume_mid_epoch_continues_exactly(tiny_model, cv_release, tmp_path, augment):
    straight = fit(tiny_model, cv_release, tmp_path / "straight" / "run", "--trainer.max_steps=6", *augment)
    fit(tiny_model, cv_release, tmp_path / "split" / "first", "--trainer.max_steps=3", *augment)  # inside epoch 0
    resumed = fit(
        tiny_model, cv_release, tmp_path / "split" / "second", "--trainer.max_steps=6", "--ckpt_path=last", *augment
    )
    assert resumed.trainer.global_step == 6
    whole, first, second = (
        losses(tmp_path / "straight" / "run"),
        losses(tmp_path / "split" / "first"),
        losses(tmp_path / "split" / "second"),
    )
    assert sorted(whole) == [0, 1, 2, 3, 4, 5] and sorted(first) == [0, 1, 2] and sorted(second) == [3, 4, 5]
    assert {**first, **second} == pytest.approx(whole, abs=1e-6)
    theirs, ours = adapters(straight.model), adapters(resumed.model)
    assert theirs.keys() == ours.keys()
    assert all(torch.allclose(theirs[k], ours[k], atol=1e-7) for k in theirs)


def test_checkpoint_holds_adapters_and_state_not_the_base(tiny_model, cv_release, tmp_path):
    cli = fit(tiny_model, cv_release, tmp_path / "run", "--trainer.max_steps=2")
    path = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=False)
    assert sorted(checkpoint["state_dict"]) == sorted(cli.model.trainable_keys())
    assert len(checkpoint["state_dict"]) == 24
    assert {"optimizer_states", "lr_schedulers", "loops", "rng_states"} <= set(checkpoint)
    # 12,288 fp32 adapter weights plus AdamW's two moments: about 150 kB; the tiny base alone is 14.6 MB in fp32
    assert path.stat().st_size < 400_000
    base_bytes = sum(p.numel() * 4 for p in cli.model.model.parameters())
    assert base_bytes > 30 * path.stat().st_size

    fresh = WhisperLoRA(tiny_model, max_new_tokens=cli.model.hparams.max_new_tokens)
    fresh.configure_model()
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=False)
    trained = adapters(cli.model)
    assert all(torch.equal(trained[k], v) for k, v in adapters(fresh).items())
    features = torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(0))
    cli.model.eval(), fresh.eval()
    assert cli.model.transcribe(features) == fresh.transcribe(features)


def test_loading_a_checkpoint_without_adapters_fails_loudly(tiny_model):
    module = WhisperLoRA(tiny_model)
    module.configure_model()
    with pytest.raises(KeyError, match="lacks 24 adapter weights"):
        module.on_load_checkpoint({"state_dict": {}})


def test_atomic_save_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, target)

    def killed_mid_write(obj, file):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt  # what a kill during the write looks like from inside

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


class PoisonBatch(L.Callback):
    """Turns the inputs of one batch into NaN, as a corrupt feature would, or (``weights``) an adapter weight into
    Inf before that batch, as a diverged training would: the loss is then non-finite on finite input."""

    def __init__(self, at: int, poison: str = "features", rank: int | None = None) -> None:
        self.at, self.poison, self.rank = at, poison, rank

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx != self.at or self.rank not in (None, trainer.global_rank):
            return
        if self.poison == "features":
            batch["input_features"].fill_(float("nan"))
        else:
            next(p for p in module.parameters() if p.requires_grad).data.fill_(float("inf"))


def nan_run(tiny_model, cv_release, policy: str, poison: str = "features") -> WhisperLoRA:
    module = WhisperLoRA(tiny_model, on_nonfinite_loss=policy, warmup_steps=0)
    data = WhisperDataModule(
        CommonVoiceFolder(str(cv_release)), tiny_model, train_split="train", val_split=None, batch_size=2, num_workers=0
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        callbacks=[PoisonBatch(at=1, poison=poison)],
    )
    trainer.fit(module, datamodule=data)
    return module


def test_non_finite_loss_stops_naming_the_step(tiny_model, cv_release):
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 1"):
        nan_run(tiny_model, cv_release, "stop")


def test_non_finite_loss_can_be_skipped_and_counted(tiny_model, cv_release):
    module = nan_run(tiny_model, cv_release, "skip")
    assert module.skipped_steps == 1
    assert all(torch.isfinite(v).all() for v in adapters(module).values())


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 1)])
def test_a_signal_during_training_leaves_a_resumable_checkpoint(tiny_model, cv_release, tmp_path, signum, exit_code):
    """Preemption: the run stops at a step boundary, writes last.ckpt and exits without a traceback. The run saves
    last.ckpt at no epoch end (every_n_epochs is out of reach), so a last.ckpt can only be the one the signal wrote."""
    at_signal_only = checkpointing(tmp_path, every_n_epochs=1_000_000, name="at-signal-only.yaml")
    args = [
        "--config",
        TINY,
        f"--model.model_name={tiny_model}",
        f"--data.source.init_args.root={cv_release}",
        "--trainer.limit_val_batches=0",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    last = tmp_path / "checkpoints" / "last.ckpt"
    # a checkpoint after every step says that training runs: a fixed sleep did not, on a loaded machine
    steps = tmp_path / "steps"
    every_step = tmp_path / "every-step.yaml"
    every_step.write_text(
        at_signal_only.read_text() + f"    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        f"      init_args: {{dirpath: {steps}, every_n_train_steps: 1, save_top_k: -1}}\n"
    )
    process = train_py(
        "fit",
        *args,
        "--config",
        str(every_step),
        "--trainer.max_steps=100000",
        "--trainer.max_epochs=-1",
        cwd=tmp_path,
        wait=False,
    )
    try:
        deadline = time.time() + 300
        while not any(steps.glob("*.ckpt")) and process.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert any(steps.glob("*.ckpt")), "training never started"
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == exit_code, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    step = torch.load(last, weights_only=False)["global_step"]
    written = max(int(p.stem.split("step=")[1]) for p in steps.glob("*.ckpt"))
    assert step in (written, written + 1)  # the step under way when the signal came, not an earlier save
    every_step_last = tmp_path / "every-step-last.yaml"  # last.ckpt after every step: the run may end mid-epoch
    every_step_last.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        f"      init_args: {{dirpath: {last.parent}, save_last: true, every_n_train_steps: 1,\n"
        "                  enable_version_counter: false}\n"
    )
    resume = [*args, "--config", str(every_step_last), f"--trainer.max_steps={step + 1}", "--ckpt_path=last"]
    resumed = train_py("fit", *resume, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(last, weights_only=False)["global_step"] == step + 1


@pytest.mark.parametrize(
    ("epochs", "steps", "limit", "accumulate"), [(2, -1, 1.0, 1), (3, 5, 1.0, 1), (2, -1, 0.5, 2), (2, -1, 1, 1)]
)
def test_the_schedules_length_is_lightnings_estimate(
    tiny_model, cv_release, tmp_path, epochs, steps, limit, accumulate
):
    """``WhisperLoRA._total_steps`` counts the datamodule's batches itself (Lightning's estimate would build the
    train loader before a resume restores it): the same number as ``trainer.estimated_stepping_batches``."""
    cli = fit(
        tiny_model,
        cv_release,
        tmp_path / "run",
        "--data.train_split=train+dev",  # 6 clips in batches of 2: 3 batches an epoch
        f"--trainer.max_epochs={epochs}",
        f"--trainer.max_steps={steps}",
        f"--trainer.limit_train_batches={limit}",
        f"--trainer.accumulate_grad_batches={accumulate}",
    )
    assert cli.model._total_steps() == cli.trainer.estimated_stepping_batches
