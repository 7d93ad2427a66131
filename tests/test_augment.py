"""Training-time augmentation: what each kind does to a clip, that every draw is a function of (seed, epoch, clip),
that bad settings and bad noise files are refused at start-up, and that only training is augmented."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.conftest import REPO, tone
from whisper_lora_pl.data.audio import SAMPLING_RATE, load_audio
from whisper_lora_pl.data.augment import Augment, Augmenter, coloured, noise_files
from whisper_lora_pl.training.cli import main
from whisper_lora_pl.training.specaugment import SpecAugment

CLIP = load_audio(REPO / "tests" / "assets" / "en_stella.flac")  # 5.25 s of speech, peak well under 1


def augmenter(settings: Augment, noise: list[Path] = (), seed: int = 0) -> Augmenter:
    others = [tone(2.0, SAMPLING_RATE, freq=f)[:, 0] for f in (300.0, 500.0, 700.0, 900.0, 1100.0)]
    return Augmenter(settings, seed, 30 * SAMPLING_RATE, list(noise), lambda i: others[i], len(others))


def snr(clean: np.ndarray, mixed: np.ndarray) -> float:
    return float(
        10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean((mixed - clean).astype(np.float64) ** 2))
    )


def test_every_draw_is_a_function_of_seed_epoch_and_clip():
    every = Augment(speed_prob=0.5, noise_prob=0.5, gain_prob=0.5)
    waves = {(s, e, i): augmenter(every, seed=s)(CLIP, e, i) for s in (0, 1) for e in (0, 1) for i in range(6)}
    assert all(np.array_equal(augmenter(every, seed=s)(CLIP, e, i), w) for (s, e, i), w in waves.items())
    distinct = {w.tobytes() for w in waves.values()}
    assert len(distinct) > 12  # other epochs, clips and seeds draw otherwise (a few draws leave a clip as it was)
    assert np.array_equal(augmenter(Augment())(CLIP, 3, 7), CLIP)  # all off: the clip as recorded


def test_speed_perturbation_resamples_and_never_outgrows_the_context():
    faster = augmenter(Augment(speed_prob=1.0, speed_factors=(1.1,)))(CLIP, 0, 0)
    slower = augmenter(Augment(speed_prob=1.0, speed_factors=(0.9,)))(CLIP, 0, 0)
    assert abs(len(faster) - len(CLIP) / 1.1) <= 1 and abs(len(slower) - len(CLIP) / 0.9) <= 1
    long = np.tile(CLIP, 6)[: 29 * SAMPLING_RATE]  # 29 s: slowed by 0.9 it would last 32 s
    assert np.array_equal(augmenter(Augment(speed_prob=1.0, speed_factors=(0.9,)))(long, 0, 0), long)


@pytest.mark.parametrize("kind", ["folder", "made"])
def test_noise_is_mixed_at_the_drawn_snr(kind, tmp_path):
    noise = []
    if kind == "folder":  # a recording shorter than the clip: looped
        noise = [tmp_path / "hum.ogg"]
        sf.write(noise[0], 0.05 * tone(1.5, 22_050, freq=120.0), 22_050)
    mixer = augmenter(Augment(noise_prob=1.0, noise_snr=(7.5, 7.5)), noise)
    for index in range(8):  # made noise: babble and the three colours among these draws
        mixed = mixer(CLIP, 0, index)
        assert len(mixed) == len(CLIP) and snr(CLIP, mixed) == pytest.approx(7.5, abs=0.01)
    quiet = 0.2 * CLIP  # at 0 dB a louder clip would be levelled down (the mix is never clipped)
    low = augmenter(Augment(noise_prob=1.0, noise_snr=(0.0, 0.0)), noise)(quiet, 0, 0)
    assert snr(quiet, low) == pytest.approx(0.0, abs=0.01) and np.abs(low).max() <= 1.0


def test_made_noise_has_its_colour():
    rng = np.random.default_rng(0)
    for kind, slope in (("white", 0.0), ("pink", -1.0), ("brown", -2.0)):
        power = np.abs(np.fft.rfft(coloured(kind, 2**16, rng))) ** 2
        f = np.arange(len(power))
        low, high = power[(f > 100) & (f < 200)].mean(), power[(f > 10_000) & (f < 20_000)].mean()
        assert np.log10(high / low) / np.log10(100) == pytest.approx(slope, abs=0.15), kind


def test_gain_changes_the_level_by_the_drawn_decibels():
    louder = augmenter(Augment(gain_prob=1.0, gain_db=(6.0, 6.0)))(CLIP, 0, 0)
    assert np.allclose(louder, CLIP * 10 ** (6 / 20), atol=1e-6)


def test_bad_settings_and_noise_folders_are_refused_at_start_up(tmp_path):
    with pytest.raises(ValueError, match=r"noise_snr is \(lowest, highest\): \[20.0, 10.0\] is upside down"):
        Augment(noise_snr=(20.0, 10.0)).check()
    with pytest.raises(ValueError, match="speed_prob must be in"):
        Augment(speed_prob=1.5).check()
    with pytest.raises(ValueError, match="is not a folder"):
        noise_files(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no usable noise file"):
        noise_files(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    sf.write(bad / "silent.wav", np.zeros(16_000, np.float32), 16_000)
    (bad / "broken.wav").write_bytes(b"RIFF\x00\x00")
    with pytest.raises(ValueError, match=r"no usable noise file \(2 left out"):
        noise_files(bad)
    sf.write(bad / "good.flac", 0.1 * tone(0.5, 16_000), 16_000)
    assert noise_files(bad) == [bad / "good.flac"]  # the others logged and left out


def test_spec_augment_masks_the_clips_frames_never_the_padding(tiny_model):
    """The masks land inside each clip's frames only, the batch is left as loaded, (seed, step, clip) decide them,
    and no global generator is drawn from or moved."""
    from whisper_lora_pl.training.module import WhisperLoRA

    module = WhisperLoRA(
        model_name=str(tiny_model),
        language=None,
        task=None,
        quantization="none",
        spec_augment=SpecAugment(mask_time_prob=0.3, mask_time_length=5, mask_feature_prob=0.3, mask_feature_length=4),
    )
    module.configure_model()
    seen = []
    module.model.get_encoder().conv1.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    features = torch.randn(2, module.model.config.num_mel_bins, 3000) + 3.0  # no frame is 0 before masking
    batch = {
        "input_features": features,
        "labels": torch.tensor([[1, 2, 3], [4, 5, 6]]),
        "duration": torch.tensor([2.0, 4.5]),
        "index": torch.tensor([3, 7]),
    }
    module._training_loss(batch)
    module.model.eval()  # no LoRA dropout: the torch generator is then drawn from by nothing
    np.random.seed(123)  # what the global generator holds does not matter
    module._training_loss(batch)
    assert torch.equal(batch["input_features"], features) and torch.equal(seen[0], seen[1])
    assert np.array_equal(np.random.get_state()[1], np.random.RandomState(123).get_state()[1])
    for row, frames in enumerate((200, 450)):
        zero = seen[0][row] == 0
        times = zero.all(0).nonzero().flatten()
        bins = zero.all(1).nonzero().flatten()
        assert len(times) > 0 and times.max() < frames  # time masks on the clip's frames
        assert len(bins) > 0  # frequency masks
        assert not zero[:, frames:][~zero.all(1)].any()  # beyond the clip only the frequency masks' bins
    batch["index"] = torch.tensor([4, 7])
    module._training_loss(batch)
    assert not torch.equal(seen[2], seen[0])  # other clips: other masks


def test_only_training_is_augmented(tiny_model, cv_release, tmp_path):
    datamodule = main(
        [
            "--config",
            str(REPO / "configs" / "tiny-cpu.yaml"),
            f"--model.model_name={tiny_model}",
            f"--data.source.init_args.root={cv_release}",
            f"--trainer.default_root_dir={tmp_path}",
            "--data.augment.noise_prob=1.0",
            "--data.augment.noise_snr=[0, 0]",
        ],
        run=False,
    ).datamodule
    datamodule.setup("fit")
    assert datamodule.augmenter is not None and datamodule.dataset("train").augmenter is datamodule.augmenter
    assert datamodule.dataset("val").augmenter is None
    item = datamodule.dataset("train")[(0, 0)]
    plain = datamodule.dataset("val").__class__(datamodule.prepared["train"], datamodule.processor.feature_extractor)
    assert not np.array_equal(item["input_features"], plain[0]["input_features"])  # noise at 0 dB moved it
    assert np.array_equal(datamodule.dataset("train")[0]["input_features"], plain[0]["input_features"])  # untagged
