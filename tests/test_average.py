"""Checkpoint averaging: the adapters' mean, everything else the last checkpoint's, usable as any checkpoint."""

import pytest
import torch

from tests.conftest import tiny_args
from whisper_lora_pl.training.average import average_checkpoints, main
from whisper_lora_pl.training.cli import main as cli_main


def every_step(folder):
    steps = folder / "every-step.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    steps.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        f"      init_args: {{dirpath: {folder / 'checkpoints'}, every_n_train_steps: 1, save_top_k: -1}}\n"
    )
    return steps


def test_the_average_of_a_runs_checkpoints_is_a_checkpoint_like_any_other(tiny_model, cv_release, tmp_path):
    run = [*tiny_args(tiny_model, cv_release, tmp_path / "run"), "--config", str(every_step(tmp_path))]
    cli_main(["fit", *run, "--trainer.limit_val_batches=0", "--trainer.max_steps=4"])
    paths = [next((tmp_path / "checkpoints").glob(f"*step={s}.ckpt")) for s in (2, 3, 4)]
    main([str(tmp_path / "averaged.ckpt"), *map(str, paths)])
    averaged = torch.load(tmp_path / "averaged.ckpt", weights_only=True)
    loaded = [torch.load(p, weights_only=True) for p in paths]
    for key, value in averaged["state_dict"].items():
        assert torch.allclose(value, sum(c["state_dict"][key] for c in loaded) / 3, atol=1e-7)
    assert not torch.equal(loaded[0]["state_dict"][key], loaded[2]["state_dict"][key])  # the steps moved them
    assert averaged["global_step"] == 4 and averaged["averaged_from"] == [str(p) for p in paths]
    test = tiny_args(tiny_model, cv_release, tmp_path / "test")
    tested = cli_main(["test", *test, f"--ckpt_path={tmp_path / 'averaged.ckpt'}"])
    assert tested.trainer.callback_metrics["test/clips"] == 2

    other = tmp_path / "other"
    cli_main(["fit", *tiny_args(tiny_model, cv_release, other), "--model.lora.r=4", "--trainer.max_steps=1",
              "--trainer.limit_val_batches=0"])  # fmt: skip
    (foreign,) = other.glob("**/checkpoints/*.ckpt")
    with pytest.raises(ValueError, match=r"other settings|other adapter weights"):
        average_checkpoints([paths[0], foreign], tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="at least two"):
        average_checkpoints([paths[0]], tmp_path / "bad.ckpt")
