"""``encoder_length: dynamic``: the encoder equals Whisper's at the full window, a batch is cut after its longest clip
in training and in every decoding path, and every take-home path decodes as the evaluation did."""

import copy
import json

import lightning as L
import numpy as np
import pytest
import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from tests.conftest import tiny_args
from whisper_lora_pl.data.audio import load_audio
from whisper_lora_pl.data.features import log_mel, trim_to_longest
from whisper_lora_pl.decoding.decode import Decoder
from whisper_lora_pl.model.build import DynamicLengthEncoder, DynamicWhisper, set_context
from whisper_lora_pl.takehome.export import RunInfo, export
from whisper_lora_pl.takehome.transcribe import decoder_for, load_model
from whisper_lora_pl.training.cli import main


def test_the_dynamic_encoder_is_whispers_at_the_full_window_and_a_short_context_below(tiny_model, tmp_path):
    """Compared with the installed transformers' own ``WhisperEncoder.forward``: a release that changes what the
    stock encoder computes (its outputs, hidden states or attentions) turns this red."""
    stock = WhisperForConditionalGeneration.from_pretrained(tiny_model).eval()
    dynamic = DynamicWhisper.from_pretrained(tiny_model).eval()
    assert type(stock.get_encoder()).forward is not DynamicLengthEncoder.forward
    features = torch.randn(2, 80, 3000)
    with torch.no_grad():
        ours = dynamic.get_encoder()(features, output_hidden_states=True, output_attentions=True)
        theirs = stock.get_encoder()(features, output_hidden_states=True, output_attentions=True)
        assert torch.equal(ours.last_hidden_state, theirs.last_hidden_state)
        assert len(ours.hidden_states) == len(theirs.hidden_states) == stock.config.encoder_layers + 1
        assert all(torch.equal(a, b) for a, b in zip(ours.hidden_states, theirs.hidden_states, strict=True))
        assert all(torch.equal(a, b) for a, b in zip(ours.attentions, theirs.attentions, strict=True))
        ten = set_context(copy.deepcopy(stock), 10.0).get_encoder()  # Whisper with a 10 s window
        short = dynamic.get_encoder()(features[..., :1000]).last_hidden_state
        assert short.shape == (2, 500, 64) and torch.equal(short, ten(features[..., :1000]).last_hidden_state)
        for frames in (3001, 999):
            with pytest.raises(ValueError, match="even number of mel frames up to 3000"):
                dynamic.get_encoder()(features[..., :frames] if frames < 3000 else torch.randn(1, 80, frames))
        # an attention mask (the feature extractor's) says where the clips end: the batch is cut after the longest
        mask = torch.zeros(2, 3000, dtype=torch.long)
        mask[0, :321], mask[1, :150] = 1, 1  # 3.2 s and 1.49 s of audio
        masked = dynamic.get_encoder()(features, attention_mask=mask).last_hidden_state
        assert torch.equal(masked, dynamic.get_encoder()(features[..., :400]).last_hidden_state)
    assert dynamic.state_dict().keys() == stock.state_dict().keys()
    dynamic.save_pretrained(tmp_path / "saved")  # a stock Whisper folder: transformers and faster-whisper load it
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["architectures"] == [
        "WhisperForConditionalGeneration"
    ]


def test_a_batch_is_cut_after_its_longest_clip_rounded_up_to_a_second():
    features = torch.zeros(3, 80, 3000)
    assert trim_to_longest(features, [3.2, 1.0, 2.5]).shape[-1] == 400  # 321 frames -> 400
    assert trim_to_longest(features, [2.985]).shape[-1] == 300  # 299 frames
    assert trim_to_longest(features, [29.999]).shape[-1] == 3000
    assert trim_to_longest(features, [3.2], minimum_seconds=10.0).shape[-1] == 1000
    assert trim_to_longest(features, [12.3], minimum_seconds=10.0).shape[-1] == 1300


def test_a_dynamic_decoder_encodes_only_the_batchs_frames(tiny_model):
    model = DynamicWhisper.from_pretrained(tiny_model).eval()
    processor = WhisperProcessor.from_pretrained(tiny_model)
    decoder = Decoder(model, processor.tokenizer, "zh", "transcribe", max_new_tokens=4)
    assert decoder.encode(torch.randn(2, 80, 3000), [4.1, 2.0]).shape == (2, 250, 64)
    padded = Decoder(
        WhisperForConditionalGeneration.from_pretrained(tiny_model).eval(), processor.tokenizer, "zh", "transcribe"
    )
    assert padded.encode(torch.randn(2, 80, 3000), [4.1, 2.0]).shape == (2, 1500, 64)
    # long audio's windows (transcribe --timestamps model) are whole, as transformers and faster-whisper decode them
    whole = Decoder(model, processor.tokenizer, "zh", "transcribe", max_new_tokens=4, whole_windows=True)
    assert whole.encode(torch.randn(2, 80, 3000), [4.1, 2.0]).shape == (2, 1500, 64)


def test_a_dynamic_decoder_gives_a_clip_the_same_text_whatever_shares_its_batch(tiny_model):
    """Each clip's encoder input is its own duration rounded up to a second, not its batch's longest: the
    evaluation's CER does not move with the batch, and one file through transcribe decodes as in the evaluation."""
    model = DynamicWhisper.from_pretrained(tiny_model).eval()
    processor = WhisperProcessor.from_pretrained(tiny_model)
    decoder = Decoder(model, processor.tokenizer, "zh", "transcribe", max_new_tokens=6)
    features = torch.randn(3, 80, 3000, generator=torch.Generator().manual_seed(0))
    durations = [4.1, 1.9, 1.5]
    together = decoder(features, durations)
    alone = [decoder(features[row : row + 1], durations[row : row + 1])[0] for row in range(3)]
    assert [(r.text, r.avg_logprob) for r in together] == [(r.text, r.avg_logprob) for r in alone]
    seen: list[int] = []
    model.get_encoder().register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[-1]))
    decoder(features, durations)
    assert seen == [200, 500]  # 1.5 and 1.9 s share a cut of 2 s; 4.1 s is cut at 5 s


@pytest.fixture(scope="module")
def dynamic_run(tiny_model, cv_release, tmp_path_factory):
    """A dynamic fit (never cut below 2.5 s) whose encoder inputs are recorded, and its checkpoint."""
    folder = tmp_path_factory.mktemp("dynamic")
    cli = main(
        [
            *tiny_args(tiny_model, cv_release, folder, "--trainer.max_steps=4", "--trainer.limit_val_batches=0"),
            "--model.encoder_length=dynamic",
            "--model.encoder_min_seconds=2.5",
        ],
        run=False,
    )
    seen: list[int] = []  # frames the encoder received, per training step
    longest: list[float] = []  # seconds of the longest clip, per training batch

    class Watch(L.Callback):
        def on_fit_start(self, trainer, module):
            module.model.get_encoder().register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[-1]))

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            longest.append(float(batch["duration"].max()))

    cli.trainer.callbacks.append(Watch())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    (checkpoint,) = folder.glob("**/checkpoints/*.ckpt")
    return checkpoint, seen, longest


def test_training_feeds_the_encoder_each_batch_cut_after_its_longest_clip(dynamic_run):
    _, seen, longest = dynamic_run
    assert len(seen) == len(longest) == 4
    assert seen == [trim_to_longest(torch.zeros(1, 1, 3000), [s], minimum_seconds=2.5).shape[-1] for s in longest]
    assert max(longest) <= 1.5 and set(seen) == {300}  # clips of 1-1.5 s: 2.5 s at least, rounded up to 3 s


def test_a_share_of_dynamic_training_steps_keeps_the_full_window(tiny_model, cv_release, tmp_path):
    """encoder_full_share: the steps drawn from (seed, step) see all 3,000 frames, the others the cut batch; the
    draw is the same on a rerun (and so on resume and on every rank, which share the seed and the step)."""

    def frames_per_step() -> list[int]:
        cli = main(
            [
                *tiny_args(tiny_model, cv_release, tmp_path / str(len(runs)), "--trainer.max_steps=8"),
                "--trainer.limit_val_batches=0",
                "--model.encoder_length=dynamic",
                "--model.encoder_full_share=0.5",
            ],
            run=False,
        )
        seen: list[int] = []

        class Watch(L.Callback):
            def on_fit_start(self, trainer, module):
                module.model.get_encoder().register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[-1]))

        cli.trainer.callbacks.append(Watch())
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        return seen

    runs: list[list[int]] = []
    runs.append(frames_per_step())
    runs.append(frames_per_step())
    assert runs[0] == runs[1] and len(runs[0]) == 8
    assert set(runs[0]) == {200, 3000}  # clips of 1-1.5 s cut to 2 s, or the full window
    assert 1 <= runs[0].count(3000) <= 7
    with pytest.raises(ValueError, match="encoder_full_share"):
        main([*tiny_args(tiny_model, cv_release, tmp_path / "bad"), "--model.encoder_full_share=1.5"], run=False)


def test_every_take_home_path_of_a_dynamic_run_decodes_like_its_evaluation(
    tiny_model, cv_release, dynamic_run, tmp_path
):
    checkpoint, _, _ = dynamic_run
    written = export(checkpoint, tmp_path / "out")
    assert RunInfo.read(written["merged"]).encoder_length == "dynamic"
    main(["test", *tiny_args(tiny_model, cv_release, tmp_path / "test"), f"--ckpt_path={checkpoint}"])
    (records_path,) = (tmp_path / "test").glob("**/predictions/test-step4.jsonl")
    evaluated = {r["id"]: r["hypothesis"] for r in map(json.loads, records_path.read_text().splitlines())}
    clips = sorted((cv_release / "zh-CN" / "clips").glob("*test*.mp3"))
    audio = [load_audio(c) for c in clips]
    processor = WhisperProcessor.from_pretrained(written["adapter"])
    features = torch.from_numpy(np.stack([log_mel(processor.feature_extractor, a) for a in audio]))
    durations = [len(a) / 16_000 for a in audio]
    for args in (
        (str(written["merged"]), None, None),
        (None, str(written["adapter"]), None),
        (None, None, str(checkpoint)),
    ):
        model, proc, info = load_model(*args)
        assert isinstance(model.get_encoder(), DynamicLengthEncoder) and model.get_encoder().min_seconds == 2.5
        texts = []
        for row in range(len(clips)):  # clip by clip, as the evaluation's batches may group them otherwise
            texts += [r.text for r in decoder_for(model, proc, info)(features[row : row + 1], durations[row : row + 1])]
        assert texts == [evaluated[c.name] for c in clips]


def test_long_audio_timed_by_a_dynamic_model_is_decoded_in_whole_windows(tiny_model, tmp_path):
    """``transcribe --timestamps model`` feeds every window whole, the last one of a file too (filled after the
    file's end as transformers and faster-whisper fill it), so that their long-form calls give its cues."""
    import soundfile as sf

    from whisper_lora_pl.takehome.transcribe import transcribe

    model = DynamicWhisper.from_pretrained(tiny_model).eval()
    processor = WhisperProcessor.from_pretrained(tiny_model)
    decoder = Decoder(model, processor.tokenizer, "zh", "transcribe", max_new_tokens=4, timestamps=True)
    path = tmp_path / "long.wav"  # 35 s: a whole window, then 5 s
    sf.write(path, 0.1 * np.random.default_rng(0).standard_normal(35 * 16_000).astype(np.float32), 16_000)
    frames = []
    model.get_encoder().register_forward_pre_hook(lambda module, args: frames.append(args[0].shape[-1]))
    transcribe([path], decoder, processor.feature_extractor, speech="none")
    assert len(frames) >= 2 and set(frames) == {3000}
