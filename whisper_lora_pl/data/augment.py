"""Training-time augmentation of the raw audio: speed perturbation, additive noise at a random SNR, gain.

Applied in the DataLoader workers to training clips only, before the log-mel. Every draw of a clip comes from
``numpy.random.default_rng([seed, epoch, index])``: a resumed run draws what the unbroken one drew, DDP ranks (other
clips) draw differently, and evaluation is never augmented. Settings that are all off leave training exactly as
without this module (the sampler then yields plain indices). SpecAugment is the model's (``model.spec_augment``):
transformers masks the log-mel inside the forward pass.

Speed perturbation resamples (Kaldi's and icefall's way: tempo and pitch move together): a factor 1.1 makes a clip
1.1 times faster and shorter. Noise comes from a folder of files (any format soundfile reads; a file shorter than
the clip is looped) or, without one, is made here: babble of other training clips mixed together, or white, pink or
brown noise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soxr
from tqdm.auto import tqdm

from whisper_lora_pl.data.audio import AUDIO_SUFFIXES, SAMPLING_RATE, AudioError, load_audio

log = logging.getLogger(__name__)

#: the kinds of noise made when no folder is given
MADE_NOISE = ("babble", "white", "pink", "brown")


@dataclass(frozen=True)
class Augment:
    """What happens to a training clip's audio (all off by default: training sees each clip as recorded).

    Args:
        speed_prob: share of clips whose speed is changed.
        speed_factors: the factors one is drawn from (uniformly); 1.1 is faster and shorter. A clip that would
            outgrow the encoder's context keeps its speed.
        noise_prob: share of clips mixed with noise.
        noise_snr: lowest and highest signal-to-noise ratio in dB (drawn uniformly), the clip's power over the
            noise's.
        noise_folder: folder of noise recordings (MUSAN-like; searched recursively). None: noise made here, babble of
            ``babble_clips`` other training clips or coloured noise (white, pink, brown), each as likely.
        babble_clips: training clips mixed into one babble.
        gain_prob: share of clips whose level is changed.
        gain_db: lowest and highest change of level in dB (drawn uniformly).
    """

    speed_prob: float = 0.0
    speed_factors: tuple[float, ...] = (0.9, 1.1)
    noise_prob: float = 0.0
    noise_snr: tuple[float, float] = (10.0, 20.0)
    noise_folder: str | None = None
    babble_clips: int = 4
    gain_prob: float = 0.0
    gain_db: tuple[float, float] = (-6.0, 6.0)

    @property
    def active(self) -> bool:
        return max(self.speed_prob, self.noise_prob, self.gain_prob) > 0

    def check(self) -> None:
        """Refuse settings that cannot work, at start-up (not in a worker, mid-run)."""
        for name in ("speed_prob", "noise_prob", "gain_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"data.augment.{name} must be in [0, 1], not {getattr(self, name)}")
        if self.speed_prob and (not self.speed_factors or min(self.speed_factors) <= 0):
            raise ValueError(f"data.augment.speed_factors must be positive factors, not {list(self.speed_factors)}")
        for name in ("noise_snr", "gain_db"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"data.augment.{name} is (lowest, highest): [{low}, {high}] is upside down")
        if self.noise_prob and self.noise_folder is None and self.babble_clips < 1:
            raise ValueError("data.augment.babble_clips must be at least 1")


def noise_files(folder: str | Path) -> list[Path]:
    """The usable noise files of ``folder``: each decoded once at start-up; unreadable, non-finite or silent ones
    are logged and left out. No folder, or nothing usable in it, is an error that says so."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"data.augment.noise_folder {root} is not a folder")
    found = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    usable, dropped = [], {}
    for path in tqdm(found, desc="checking noise files", disable=len(found) < 50):
        try:
            wave = load_audio(path)
        except AudioError as err:
            dropped[path] = err.reason
            continue
        if not np.any(wave):
            dropped[path] = "silent"
            continue
        usable.append(path)
    for path, why in dropped.items():
        log.warning("noise file %s left out: %s", path, why)
    if not usable:
        detail = f" ({len(dropped)} left out: {sorted(set(dropped.values()))})" if dropped else ""
        raise ValueError(
            f"data.augment.noise_folder {root} has no usable noise file{detail}: give a folder of recordings in a "
            f"format soundfile reads ({', '.join(sorted(AUDIO_SUFFIXES))}), or leave it unset to make noise"
        )
    return usable


class Augmenter:
    """Augments one clip's wave; picklable, so each DataLoader worker holds a copy.

    Args:
        settings: the :class:`Augment` settings.
        seed: the run's data seed (``data.shuffle_seed``).
        max_samples: the encoder's context in samples: no clip is slowed down past it.
        noise: usable noise files (:func:`noise_files`), or empty to make noise.
        clip: loads training clip ``i``'s wave (for babble), and ``clips`` how many there are.
    """

    def __init__(
        self,
        settings: Augment,
        seed: int,
        max_samples: int,
        noise: list[Path],
        clip: Callable[[int], np.ndarray],
        clips: int,
    ) -> None:
        self.settings, self.seed, self.max_samples = settings, seed, max_samples
        self.noise, self.clip, self.clips = noise, clip, clips

    def __call__(self, wave: np.ndarray, epoch: int, index: int) -> np.ndarray:
        s = self.settings
        rng = np.random.default_rng([self.seed, epoch, index])
        # every draw is made, in this order, whatever the outcome: each is a function of (seed, epoch, index)
        speed, factor = rng.random() < s.speed_prob, float(rng.choice(s.speed_factors))
        noisy, snr, noise_seed = rng.random() < s.noise_prob, rng.uniform(*s.noise_snr), int(rng.integers(2**32))
        gain, db = rng.random() < s.gain_prob, rng.uniform(*s.gain_db)
        if speed and factor != 1.0 and len(wave) / factor <= self.max_samples:
            wave = soxr.resample(wave, SAMPLING_RATE * factor, SAMPLING_RATE).astype(np.float32)
        if noisy:
            wave = self._noisy(wave, snr, np.random.default_rng(noise_seed), index)
        if gain:
            wave = wave * np.float32(10 ** (db / 20))
        return wave

    def _noisy(self, wave: np.ndarray, snr: float, rng: np.random.Generator, index: int) -> np.ndarray:
        power = float(np.mean(wave.astype(np.float64) ** 2))
        noise = self._noise(len(wave), rng, index)
        noise_power = float(np.mean(noise.astype(np.float64) ** 2))
        if power == 0 or noise_power == 0:  # a silent clip has no SNR; a silent stretch of noise adds nothing
            return wave
        mixed = wave + noise * np.float32(np.sqrt(power / noise_power / 10 ** (snr / 10)))
        peak = float(np.abs(mixed).max())
        return mixed / np.float32(peak) if peak > 1.0 else mixed  # as a recording would be levelled, not clipped

    def _noise(self, length: int, rng: np.random.Generator, index: int) -> np.ndarray:
        if self.noise:
            path = self.noise[int(rng.integers(len(self.noise)))]
            try:
                return _stretch(_recording(path), length, rng)
            except AudioError as err:  # read at start-up, so it changed since: this clip stays clean
                log.warning("noise file %s could not be read (%s): clip %d not mixed", path, err, index)
                return np.zeros(length, np.float32)
        kind = MADE_NOISE[int(rng.integers(len(MADE_NOISE)))]
        if kind == "babble":
            return self._babble(length, rng, index)
        return coloured(kind, length, rng)

    def _babble(self, length: int, rng: np.random.Generator, index: int) -> np.ndarray:
        """Other training clips, each at the same power, looped and summed: a crowd of voices."""
        others = [i for i in rng.choice(self.clips, size=min(self.clips, self.settings.babble_clips + 1)) if i != index]
        babble = np.zeros(length, np.float32)
        for other in others[: self.settings.babble_clips]:
            try:
                voice = self.clip(int(other))
            except AudioError:
                continue  # a clip that fails is skipped where it is trained on; here it is one voice less
            rms = float(np.sqrt(np.mean(voice.astype(np.float64) ** 2)))
            if rms > 0:
                babble += _stretch(voice / np.float32(rms), length, rng)
        return babble


def coloured(kind: str, length: int, rng: np.random.Generator) -> np.ndarray:
    """White, pink (power falls as 1/f) or brown (1/f^2) noise of unit power."""
    white = rng.standard_normal(length)
    if kind != "white":
        spectrum = np.fft.rfft(white)
        f = np.arange(len(spectrum), dtype=np.float64)
        f[0] = 1.0
        spectrum /= np.sqrt(f) if kind == "pink" else f
        white = np.fft.irfft(spectrum, n=length)
    return (white / max(float(np.sqrt(np.mean(white**2))), 1e-12)).astype(np.float32)


@lru_cache(maxsize=8)
def _recording(path: Path) -> np.ndarray:
    return load_audio(path)


def _stretch(noise: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """``length`` samples of ``noise`` from a random offset, looped when it is shorter."""
    start = int(rng.integers(len(noise)))
    reps = -(-(start + length) // len(noise))
    return np.tile(noise, reps)[start : start + length]
