"""What a user sees: a console without per-batch library warnings, and the run's logs and picture."""

import re
from collections import Counter
from types import SimpleNamespace

import torch

from tests.conftest import tiny_args, train_py
from whisper_lora_pl.training.curves import TrainingCurves


def test_a_fit_prints_no_line_per_batch_and_leaves_tensorboard_csv_and_curves(tiny_model, cv_release, tmp_path):
    """6 training steps and 2 validation batches per pass (3 passes and a 2-batch sanity check): a message
    printed per batch would appear 6 times or more; what the run reports per evaluation may appear 4 times."""
    run = train_py(
        "fit",
        *tiny_args(tiny_model, cv_release, tmp_path),
        "--trainer.max_steps=6",
        "--trainer.limit_val_batches=2",
        "--data.eval_batch_size=1",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [
        re.sub(r"\d+", "N", line.strip())
        for line in (run.stdout + run.stderr).splitlines()
        if line.strip() and not re.search(r"[━│┃┏┡└%]", line)  # progress bars and the metrics table
    ]
    repeated = {line: n for line, n in Counter(lines).items() if n > 4}
    assert not repeated, repeated
    for quiet in (
        "max_new_tokens",
        "attention mask",
        "Unable to serialize",
        "Tip:",
        "gemm_4bit",
        "set_vital",
        "dequantized in",
    ):
        assert quiet not in run.stdout + run.stderr, quiet

    (folder,) = (tmp_path / "lightning_logs").iterdir()
    assert (folder / "metrics.csv").is_file() and list(folder.glob("events.out.tfevents.*"))
    curves = folder / "curves.png"
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and curves.stat().st_size > 20_000


def test_the_curves_pass_over_a_step_that_was_skipped():
    """A step whose clips all failed returns no loss: Lightning hands the callback ``{}`` (it raised KeyError)."""
    curves = TrainingCurves()
    optimizer = SimpleNamespace(param_groups=[{"lr": 0.5}])
    trainer = SimpleNamespace(is_global_zero=True, global_step=3, optimizers=[optimizer])
    curves.on_train_batch_end(trainer, None, {}, None, 0)
    curves.on_train_batch_end(trainer, None, {"loss": torch.tensor(2.0)}, None, 1)
    assert curves.train == [(3, 2.0, 0.5)]
