"""The learning check: real whisper-base, int8 + LoRA, the shipped Mandarin corpus, held-out sentences and voices."""

import pytest

from tests.conftest import REPO
from whisper_lora_pl.cli import main


@pytest.mark.slow
def test_demo_halves_the_held_out_cer(tmp_path):
    """configs/demo.yaml as the README runs it: one epoch, 20 steps of 8 clips (about 6 minutes on 2 CPU cores)."""
    no_checkpoints = tmp_path / "no-checkpoints.yaml"
    no_checkpoints.write_text("trainer:\n  callbacks: []\n  enable_checkpointing: false\n")
    cli = main(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "demo.yaml"),
            "--config",
            str(no_checkpoints),
            f"--data.source.init_args.root={REPO / 'data' / 'demo-zh-CN'}",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    history = cli.model.eval_history
    (first, before), (last, after) = history[0], history[-1]
    assert first == "before training" and last == "step 20"
    print(f"test CER {before['val/cer']:.4f} -> {after['val/cer']:.4f}")
    assert after["val/cer"] <= 0.5 * before["val/cer"]
    assert after["val/cer"] < 0.75  # not only fewer hallucinated repetitions: most characters right (0.53 here)
