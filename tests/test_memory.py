"""The worst batches run before step 1 (``memory.MemoryCheck``): an impossible batch stops the run at once, naming the
setting to lower and the value that fits; a possible one leaves the run exactly as it would have been without it."""

import functools
import re

import pytest
import torch
import yaml
from transformers import WhisperForConditionalGeneration

from tests.conftest import REPO, tiny_args
from tests.test_resume import adapters, losses
from whisper_lora_pl.training.batch_probe import probe
from whisper_lora_pl.training.cli import main
from whisper_lora_pl.training.memory import MemoryCheck, OutOfMemoryBudget

#: 6 training clips (train + dev) and 2 test clips: one bucket, batches of 2 by default
SPLITS = ("--data.train_split=train+dev", "--data.val_split=test")
#: the shipped encoder: cut after each batch's longest clip, a fifth of the steps on the full window, 10 buckets
DYNAMIC = ("--model.encoder_length=dynamic", "--model.encoder_full_share=0.2", "--data.num_buckets=10")


def run(tiny_model, cv_release, folder, *extra):
    return main(
        [
            "fit",
            *tiny_args(tiny_model, cv_release, folder, *SPLITS),
            "--trainer.max_steps=3",
            "--memory_check.on_cpu=true",  # the GPU's default: the worst batches first
            "--trainer.logger=CSVLogger",
            f"--trainer.logger.save_dir={folder}",
            *extra,
        ]
    )


def check_of(cli) -> MemoryCheck:
    (check,) = [c for c in cli.trainer.callbacks if isinstance(c, MemoryCheck)]
    return check


def test_the_check_leaves_the_run_exactly_as_without_it(tiny_model, cv_release, tmp_path):
    """Same losses, same adapters: the check's batches draw LoRA dropout from a forked random stream and leave no
    gradient behind (an unforked stream moves every later dropout mask: red, checked)."""
    checked = run(tiny_model, cv_release, tmp_path / "on")
    plain = run(tiny_model, cv_release, tmp_path / "off", "--memory_check.enabled=false")
    report = check_of(checked).report
    assert report["train_peak"] > 0 and report["eval_peak"] > 0
    assert report["frozen base"] > 0 and report["evaluation copy"] > 0
    assert check_of(plain).report == {}
    assert losses(tmp_path / "on") == losses(tmp_path / "off") and len(losses(tmp_path / "on")) == 3
    ours, theirs = adapters(checked.model), adapters(plain.model)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def out_of_memory_above(training: int | None = None, evaluation: int | None = None):
    """``WhisperForConditionalGeneration.forward`` that runs out of memory on a batch of more than ``training`` clips
    with gradients, or more than ``evaluation`` without, as a GPU would."""
    original = WhisperForConditionalGeneration.forward

    @functools.wraps(original)  # generate() reads the signature
    def forward(self, *args, **kwargs):
        batch = kwargs.get("input_features")
        if batch is None:
            batch = kwargs["encoder_outputs"].last_hidden_state
        most = training if torch.is_grad_enabled() else evaluation
        if most is not None and len(batch) > most:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return original(self, *args, **kwargs)

    return forward


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            "--data.batch_size=6",
            r"\(6 clips of 30 s .*\) does not fit; 2 clips fit: lower data\.batch_size from 6 to (2) and .* 3x",
        ),
        # the 6 clips (at most ~1.6 s) in one bucket: 10 s a batch makes batches of 6
        (
            "--data.batch_seconds=10",
            r"\(6 clips of 30 s .*\) does not fit; 2 clips fit: lower data\.batch_seconds from 10 to ([\d.]+) ",
        ),
    ],
    ids=["batch_size", "batch_seconds"],
)
def test_an_impossible_training_batch_stops_the_run_before_step_1_with_a_value_that_fits(
    tiny_model, cv_release, tmp_path, monkeypatch, setting, message
):
    """The full window (a share of steps keeps it) and the most clips a batch holds; the value it names passes."""
    monkeypatch.setattr(WhisperForConditionalGeneration, "forward", out_of_memory_above(training=2))
    steps = []
    monkeypatch.setattr("whisper_lora_pl.training.module.WhisperLoRA.on_train_batch_end", lambda *a: steps.append(1))
    with pytest.raises(OutOfMemoryBudget, match=message) as caught:
        run(tiny_model, cv_release, tmp_path / "worst", setting, *DYNAMIC)
    assert steps == []  # not one step was taken
    advised = f"{setting.split('=')[0]}={re.search(message, str(caught.value)).group(1)}"
    cli = run(tiny_model, cv_release, tmp_path / "advised", advised, *DYNAMIC)
    assert cli.trainer.global_step == 3 and steps == [1, 1, 1]


def test_an_impossible_evaluation_batch_stops_the_run_before_step_1(tiny_model, cv_release, tmp_path, monkeypatch):
    monkeypatch.setattr(WhisperForConditionalGeneration, "forward", out_of_memory_above(evaluation=1))
    with pytest.raises(
        OutOfMemoryBudget,
        match=r"\(2 clips of 2 s\) does not fit; 1 clips fit: lower data\.eval_batch_size from 2 to 1",
    ):
        run(tiny_model, cv_release, tmp_path, "--data.eval_batch_size=2", "--model.encoder_length=dynamic")
    # a dynamic encoder decodes each clip at its own length: the split's longest, rounded up to a second


def test_the_shipped_configs_run_the_check(tiny_model, cv_release, tmp_path):
    """On unless turned off: every config gets it from the CLI (none of them names it); a CPU run logs what it
    holds and runs no batch unless asked."""
    for config in ("demo.yaml", "whisper-large-v2-zh.yaml"):
        assert "memory_check" not in yaml.safe_load((REPO / "configs" / config).read_text())
    cli = main(["fit", *tiny_args(tiny_model, cv_release, tmp_path, "--trainer.max_steps=1")])
    check = check_of(cli)
    assert check.enabled and not check.on_cpu
    assert check.report.keys() == {"frozen base", "adapters + gradients + optimizer", "evaluation copy"}


@pytest.mark.parametrize(
    "setting", ["--data.batch_size=2", "--data.batch_seconds=4"], ids=["batch_size", "batch_seconds"]
)
def test_the_probe_prints_the_largest_batches_that_fit(tiny_model, cv_release, tmp_path, monkeypatch, capsys, setting):
    """Doubling, then bisection: 3 training clips and 1 evaluation clip fit here, whatever the config says now."""
    args = [*tiny_args(tiny_model, cv_release, tmp_path, *SPLITS), setting, *DYNAMIC]
    with pytest.raises(SystemExit, match="on the CPU memory runs out by the kernel"):
        probe(args)
    monkeypatch.setattr(WhisperForConditionalGeneration, "forward", out_of_memory_above(training=3, evaluation=1))
    found = probe(args, limit_gib=1000)
    printed = capsys.readouterr().out
    if "batch_size" in setting:
        assert found == {"data.batch_size": 3, "data.eval_batch_size": 1}
        assert printed.endswith("data:\n  batch_size: 3\n  eval_batch_size: 1\n")
    else:  # 3 clips of the bucket of the shortest clips: what batch_seconds gives them
        (seconds,) = [v for k, v in found.items() if k == "data.batch_seconds"]
        assert f"  batch_seconds: {seconds:g}\n" in printed
        probed = (f"--data.batch_seconds={seconds}", "--data.eval_batch_size=1")
        cli = run(tiny_model, cv_release, tmp_path / "probed", *probed, *DYNAMIC)
        assert check_of(cli).report["train_peak"] > 0  # the probed value passes the check it was probed with


def test_the_check_counts_the_base_the_eval_sets_route_other_languages_to(
    tiny_model, cv_release, tmp_path, monkeypatch
):
    """With eval sets and ``other_languages: base``, a pass holds the base's copy beside the merged one: the check
    counts it (as large as the evaluation copy of an int8 base in float32) and decodes its evaluation batch with
    it built; a long set makes that batch the whole window. Without eval sets, no base copy is held or counted."""
    from tests.test_evalsets import write_sets
    from whisper_lora_pl.training import memory

    built = []
    original = memory.merged_in_memory

    def spy(model, dtype, adapters=True):
        built.append(adapters)
        return original(model, dtype, adapters=adapters)

    monkeypatch.setattr(memory, "merged_in_memory", spy)
    sets = f"--data.eval_sets={write_sets(tmp_path, cv_release)}"
    routed = run(tiny_model, cv_release, tmp_path / "routed", sets, "--model.decoding.other_languages=base",
                 "--trainer.max_steps=1", "--model.encoder_length=dynamic")  # fmt: skip
    report = check_of(routed).report
    assert report["base copy for other languages"] == report["evaluation copy"] > 0
    assert False in built  # the check's evaluation batch held the base
    seen = []
    monkeypatch.setattr(memory, "decode_once", lambda module, shape: seen.append(shape))
    run(tiny_model, cv_release, tmp_path / "shape", sets, "--trainer.max_steps=1", "--model.encoder_length=dynamic")
    assert seen[0].seconds == 30.0  # the long set's pieces, not the split's longest clip (2 s)
    built.clear()
    plain = run(tiny_model, cv_release, tmp_path / "plain", "--model.decoding.other_languages=base",
                "--trainer.max_steps=1")  # fmt: skip
    assert "base copy for other languages" not in check_of(plain).report and False not in built
