"""Packed training windows with timestamp labels: what a window holds, its labels in OpenAI's format on the audio's
real times, seeded (exact resume), DDP in step, and a fit that trains on them."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import WhisperProcessor

from tests.conftest import tiny_args
from tests.test_resume import adapters, fit, losses
from whisper_lora_pl.data.audio import SAMPLING_RATE
from whisper_lora_pl.data.dataset import PreparedSplit, SpeechDataset
from whisper_lora_pl.data.packing import PackedSpeech, PackedWindows, Window
from whisper_lora_pl.data.sources import Example
from whisper_lora_pl.model.merging import load_checkpoint
from whisper_lora_pl.training.cli import main

DURATIONS = np.random.default_rng(0).uniform(1.5, 6.0, 101).round(2).tolist()
TOKENS = np.random.default_rng(1).integers(5, 40, 101).tolist()

#: 4 windows a batch, a 30 s context, pauses up to 1.5 s, 448 label tokens of which 3 prompt tokens
SHAPE = dict(batch_size=4, context=30.0, longest_pause=1.5, max_label_length=448, prompt_length=3)


def windows(sampler: PackedWindows, epoch: int = 0) -> list[list[Window]]:
    sampler.current_epoch = lambda: epoch
    return list(sampler)


def test_windows_hold_consecutive_shuffled_clips_that_fit_the_context_and_the_decoder():
    sampler = PackedWindows(DURATIONS, TOKENS, **SHAPE)
    packed = sampler.windows(0)
    clips = [c for w in packed for c in w.clips]
    assert sorted(clips) == list(range(101))  # every clip once
    for w in packed:
        assert sum(DURATIONS[c] for c in w.clips) + 1.5 * (len(w.clips) - 1) <= 30.0
    assert np.mean([len(w.clips) for w in packed]) > 5  # 3.75 s on average: 6-7 clips a window
    batches = windows(sampler)
    assert len(batches) == len(sampler) == -(-len(packed) // 4) and max(len(b) for b in batches) <= 4
    # the decoder's 448 tokens bound a window too: 3 prompt tokens, 2 timestamps a clip, <|endoftext|>
    wordy = PackedWindows(DURATIONS, [200] * 101, **SHAPE)
    assert max(len(w.clips) for w in wordy.windows(0)) == 2 and 3 + 2 * 202 + 1 <= 448


def test_the_mixed_fill_packs_each_batch_up_to_a_length_of_its_own():
    """A dynamic encoder is cut after a batch's longest window: with every window full it would only ever train on
    30 s inputs, and the evaluation's single clips are cut a second after their speech."""

    def seconds(window: Window) -> float:
        return sum(DURATIONS[c] for c in window.clips) + 1.5 * (len(window.clips) - 1)

    full = PackedWindows(DURATIONS, TOKENS, **SHAPE, seed=2)
    mixed = PackedWindows(DURATIONS, TOKENS, **SHAPE, seed=2, fill="mixed")
    assert min(max(seconds(w) for w in batch) for batch in windows(full)) > 24  # every batch cut near 30 s
    longest = [max(seconds(w) for w in batch) for batch in windows(mixed)]
    assert min(longest) < 7 and max(longest) > 24  # single clips as well as full windows
    assert sorted(c for w in mixed.windows(0) for c in w.clips) == list(range(101))  # epoch 0: every clip once
    assert windows(mixed, 1) != windows(mixed, 0) and windows(mixed, 1) == windows(mixed, 1)
    assert len(windows(mixed, 1)) == len(windows(mixed, 0)) == len(mixed)
    with pytest.raises(ValueError, match="fill"):
        PackedWindows(DURATIONS, TOKENS, **SHAPE, fill="half")


def test_windows_are_a_function_of_seed_and_epoch_and_every_epoch_has_as_many():
    make = lambda seed: PackedWindows(DURATIONS, TOKENS, **SHAPE, seed=seed)  # noqa: E731
    assert windows(make(3), 0) == windows(make(3), 0)
    assert windows(make(3), 1) != windows(make(3), 0) and windows(make(4), 0) != windows(make(3), 0)
    assert len(windows(make(3), 1)) == len(windows(make(3), 0)) == len(make(3))


def test_ddp_ranks_take_other_windows_in_the_same_number_of_steps():
    ranks = [PackedWindows(DURATIONS, TOKENS, **SHAPE, num_replicas=2, rank=r, seed=5) for r in (0, 1)]
    first, second = (windows(s, 2) for s in ranks)
    assert len(first) == len(second) == len(ranks[0])
    taken = [w for batch in first + second for w in batch]
    assert {c for w in taken for c in w.clips} == set(range(101))
    assert all(batch for batch in first + second)


@pytest.fixture(scope="module")
def processor(tiny_model):
    processor = WhisperProcessor.from_pretrained(tiny_model)
    processor.tokenizer.set_prefix_tokens(language="zh", task="transcribe", predict_timestamps=False)
    return processor


def clips_split(tmp_path, processor, seconds=(1.0, 2.5, 0.5)) -> PreparedSplit:
    examples, labels = [], []
    for i, length in enumerate(seconds):
        path = tmp_path / f"{i}.wav"
        sf.write(path, np.full(int(length * SAMPLING_RATE), 0.1 * (i + 1), np.float32), SAMPLING_RATE)
        examples.append(Example(str(path), f"第{i}句", f"c{i}"))
        labels.append(processor.tokenizer(f"第{i}句").input_ids)
    return PreparedSplit(examples, labels, list(seconds))


def packed(processor, split, share):
    no_timestamps, end = processor.tokenizer.convert_tokens_to_ids(["<|notimestamps|>", "<|endoftext|>"])
    return PackedSpeech(
        SpeechDataset(split, processor.feature_extractor),
        pauses=(0.2, 1.0),
        timestamp_share=share,
        no_timestamps_id=no_timestamps,
        end_id=end,
        prompt_length=3,
    )


def test_a_window_is_its_clips_joined_with_pauses_and_labelled_with_their_times(tmp_path, processor):
    split = clips_split(tmp_path, processor)
    tokenizer = processor.tokenizer
    item = packed(processor, split, share=1.0)[Window((2, 0, 1), seed=7)]
    tokens = tokenizer.convert_ids_to_tokens(item["labels"])
    assert tokens[:3] == ["<|startoftranscript|>", "<|zh|>", "<|transcribe|>"] and tokens[-1] == "<|endoftext|>"
    stamps = [float(t[2:-2]) for t in tokens if t.startswith("<|") and t[2].isdigit()]
    assert len(stamps) == 6 and stamps == sorted(stamps) and stamps[0] == 0.0
    assert tokenizer.decode(item["labels"], skip_special_tokens=True) == "第2句第0句第1句"
    # the times are where each clip lies in the window's audio (clips are constant levels 0.3, 0.1, 0.2)
    rng = np.random.default_rng(7)
    rng.random()
    pauses = [round(rng.uniform(0.2, 1.0) * SAMPLING_RATE) / SAMPLING_RATE for _ in range(2)]
    starts = [0.0, 0.5 + pauses[0], 0.5 + pauses[0] + 1.0 + pauses[1]]
    ends = [0.5, starts[1] + 1.0, starts[2] + 2.5]
    assert stamps == pytest.approx([x for pair in zip(starts, ends, strict=True) for x in pair], abs=0.011)
    assert item["duration"] == pytest.approx(ends[-1]) and item["clips"] == 3
    assert item["input_features"].shape[-1] == 3000  # padded to the context, as a clip is
    plain = packed(processor, split, share=0.0)[Window((2, 0, 1), seed=7)]
    assert tokenizer.convert_ids_to_tokens(plain["labels"])[:4][-1] == "<|notimestamps|>"
    assert tokenizer.decode(plain["labels"], skip_special_tokens=True) == "第2句第0句第1句"
    assert np.array_equal(plain["input_features"], item["input_features"])  # same pauses from the same seed


def test_a_clip_that_fails_is_left_out_of_its_window_and_counted(tmp_path, processor):
    split = clips_split(tmp_path, processor)
    (tmp_path / "1.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    item = packed(processor, split, share=1.0)[Window((0, 1, 2), seed=1)]
    assert item["clips"] == 2 and item["skipped"] == {"c1": "truncated or corrupt"}
    assert processor.tokenizer.decode(item["labels"], skip_special_tokens=True) == "第0句第2句"


def test_a_fit_on_packed_windows_with_timestamps_trains_on_every_clip(tiny_model, cv_release, tmp_path):
    cli = main(["fit", *tiny_args(tiny_model, cv_release, tmp_path, "--trainer.max_epochs=1",
                                  "--data.pack_windows=true", "--data.timestamp_share=0.5")])  # fmt: skip
    assert cli.trainer.global_step == 1  # 4 clips of 1-1.5 s: one window
    assert cli.trainer.callback_metrics["train/clips"] == 4
    (checkpoint,) = tmp_path.glob("**/checkpoints/*.ckpt")  # transcribe's --timestamps follows the run: model
    assert load_checkpoint(checkpoint)[1].timestamps is True


@pytest.mark.parametrize(("share", "setting", "expected"), [(0.5, "pauses", False), (0.0, "model", True)])
def test_model_decoding_timestamps_chooses_how_the_run_decodes_long_audio(tiny_model, cv_release, tmp_path, share,
                                                                           setting, expected):  # fmt: skip
    """``model.decoding.timestamps`` over the run's training: a run trained on timestamp labels may cut long audio
    at pauses (and a plain one be timed by the model); the checkpoint tells transcribe, the long eval sets follow."""
    extra = ["--trainer.max_steps=1", f"--data.timestamp_share={share}", f"--model.decoding.timestamps={setting}"]
    cli = main(["fit", *tiny_args(tiny_model, cv_release, tmp_path, *extra)])
    assert cli.model.long_timestamps() is expected
    (checkpoint,) = tmp_path.glob("**/checkpoints/*.ckpt")
    assert load_checkpoint(checkpoint)[1].timestamps is expected


def test_resume_mid_epoch_continues_exactly_on_packed_windows(tiny_model, cv_release, tmp_path):
    """8 clips of 1-1.5 s with pauses of 14-15 s, batches of 2 windows of 1 or 2 clips (the default fill draws each
    batch's length): 3 steps an epoch, stopped after the first step of epoch 1."""
    packing = ["--data.pack_windows=true", "--data.pack_pauses=[14.0, 15.0]", "--data.timestamp_share=0.5"]
    straight = fit(tiny_model, cv_release, tmp_path / "straight" / "run", "--trainer.max_steps=5", *packing)
    fit(tiny_model, cv_release, tmp_path / "split" / "first", "--trainer.max_steps=4", *packing)  # inside epoch 1
    resumed = fit(tiny_model, cv_release, tmp_path / "split" / "second", "--trainer.max_steps=5", "--ckpt_path=last",
                  *packing)  # fmt: skip
    assert straight.trainer.num_training_batches == 3
    whole, first, second = (losses(tmp_path / p) for p in ("straight/run", "split/first", "split/second"))
    assert sorted(first) == [0, 1, 2, 3] and sorted(second) == [4]
    assert {**first, **second} == pytest.approx(whole, abs=1e-6)
    theirs, ours = adapters(straight.model), adapters(resumed.model)
    assert all(torch.allclose(theirs[k], ours[k], atol=1e-7) for k in theirs)
