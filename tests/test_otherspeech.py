"""``data.other_speech``: clips in other languages, labelled by the base, mixed into training in their share."""

import json

import pytest
import torch

from tests.conftest import tiny_args, write_clip
from whisper_lora_pl.cli import main
from whisper_lora_pl.data.datamodule import WhisperDataModule
from whisper_lora_pl.data.otherspeech import OtherSpeech
from whisper_lora_pl.data.sources import CommonVoiceFolder
from whisper_lora_pl.model.merging import load_checkpoint
from whisper_lora_pl.takehome.export import model_card


def write_other(folder, rows: list[dict]) -> str:
    """A manifest of other speech; each row's audio a tone (unless it says ``missing``)."""
    for i, row in enumerate(rows):
        if not row.pop("missing", False):
            write_clip(folder / row["audio"], seconds=1.0 + 0.5 * i, rate=16_000, freq=500 + 100 * i)
    path = folder / "other.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


ROWS = [
    {"audio": "a.wav", "text": "Hello there.", "language": "en"},
    {"audio": "b.wav", "text": "Bonjour.", "language": "French"},
    {"audio": "c.wav", "text": "No language said."},
    {"audio": "d.wav", "text": "Not Whisper's.", "language": "xx"},
    {"audio": "e.wav", "text": "Gone.", "language": "en", "missing": True},
]


def datamodule(model, corpus, other: OtherSpeech | None, **kwargs) -> WhisperDataModule:
    dm = WhisperDataModule(CommonVoiceFolder(str(corpus)), model, "zh", "transcribe", "train", "dev", "test",
                           batch_size=3, num_workers=0, other_speech=other, **kwargs)  # fmt: skip
    dm.setup("fit")
    return dm


def test_other_speech_joins_the_training_split_in_its_share_each_clip_prompted_in_its_language(
    tiny_model, cv_release, tmp_path
):
    """share 0.5 of 4 training clips: 4 clips of other speech, its 2 usable rows in order, cycled; each labelled
    after ``<|en|>`` or ``<|fr|>``, the training split's after ``<|zh|>``; the unusable rows counted by reason; the
    run's pieces of long audio still the trained language's clips; the evaluation's prompt untouched."""
    other = OtherSpeech(write_other(tmp_path, [dict(r) for r in ROWS]), share=0.5)
    dm = datamodule(tiny_model, cv_release, other)
    plain = datamodule(tiny_model, cv_release, None)
    train = dm.prepared["train"]
    tokenizer = dm.processor.tokenizer
    assert len(train.examples) == 8 and train.other == 4
    assert [e.id for e in train.examples[4:]] == ["a.wav", "b.wav", "a.wav", "b.wav"]
    assert [e.language for e in train.examples[4:6]] == ["en", "fr"]
    firsts = [tokenizer.convert_ids_to_tokens(train.labels[i][1]) for i in range(8)]
    assert firsts == ["<|zh|>"] * 4 + ["<|en|>", "<|fr|>"] * 2
    assert tokenizer.decode(train.labels[4], skip_special_tokens=True) == "Hello there."
    assert train.skipped == {
        "other speech: no language": 1,
        "other speech: language 'xx' is not one of Whisper's": 1,
        "other speech: missing file": 1,
    }
    assert "8 clips kept (of them 4 of other speech, labelled by the base)" in train.summary("train")
    assert dm.training_clip_seconds() == plain.training_clip_seconds()
    assert list(dm.prepared["val"].labels) == list(plain.prepared["val"].labels)  # the prompt was put back
    assert tokenizer.prefix_tokens == plain.processor.tokenizer.prefix_tokens
    languages = [  # every clip of the epoch is in a batch once: 4 Chinese, 2 x 2 other
        tokenizer.convert_ids_to_tokens(int(row[0])) for batch in dm.train_dataloader() for row in batch["labels"]
    ]
    assert sorted(languages) == sorted(["<|zh|>"] * 4 + ["<|en|>", "<|fr|>"] * 2)


def test_other_speech_errors_say_what_to_change(tiny_model, cv_release, tmp_path):
    with pytest.raises(ValueError, match=r"share must be in \(0, 1\)"):
        OtherSpeech("x.jsonl", share=1.0)
    unusable = write_other(tmp_path, [{"audio": "c.wav", "text": "No language."}])
    with pytest.raises(ValueError, match=r"every clip of data.other_speech .* was skipped"):
        datamodule(tiny_model, cv_release, OtherSpeech(unusable))
    with pytest.raises(ValueError, match=r"does not work with data\.pack_windows"):
        datamodule(tiny_model, cv_release, OtherSpeech(unusable), pack_windows=True)
    with pytest.raises(FileNotFoundError, match="not found"):
        datamodule(tiny_model, cv_release, OtherSpeech(str(tmp_path / "gone.jsonl")))


def test_a_fit_trains_on_its_share_of_other_speech(tiny_model, cv_release, tmp_path):
    """Through the CLI, as a config sets it: an epoch of 4 training clips and 4 of other speech at batch size 2 is
    4 steps, against 2 without; both the language given per row and ``language:`` for the rest work."""
    rows = [{"audio": "a.wav", "text": "Hello there."}, {"audio": "b.wav", "text": "Good day.", "language": "de"}]
    other = json.dumps({"manifest": write_other(tmp_path, rows), "share": 0.5, "language": "English"})
    steps = {}
    for name, extra in (("plain", []), ("other", [f"--data.other_speech={other}"])):
        args = tiny_args(tiny_model, cv_release, tmp_path / name, "--trainer.max_steps=-1", "--trainer.max_epochs=1",
                         "--trainer.limit_val_batches=0", *extra)  # fmt: skip
        fit = main(["fit", *args])
        steps[name] = fit.trainer.global_step
        train = fit.datamodule.prepared["train"]
        assert train.other == (4 if extra else 0)
    assert steps == {"plain": 2, "other": 4}
    assert [e.language for e in train.examples[4:]] == ["en", "de", "en", "de"]
    (checkpoint,) = (tmp_path / "other").glob("**/*.ckpt")  # the merged weights' model card says what they keep
    info = load_checkpoint(checkpoint)[1]
    assert info.other_speech == {"en": 2, "de": 2}
    assert "each epoch 2 in `de`, 2 in `en`, labelled by the base itself" in model_card(info, "merged")
    assert torch.isfinite(fit.trainer.callback_metrics["train/loss"])
