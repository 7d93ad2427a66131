"""SpecAugment of the training log-mel: time and frequency masks drawn from a generator of our own.

transformers' ``WhisperModel._mask_input_features`` draws from numpy's global generator; the masks here follow its
rule (``_compute_mask_indices``: ``int(prob x length / span + u)`` spans, at least ``min_masks``, starts drawn
without replacement) but each clip's come from ``numpy.random.default_rng([seed, step, clip index])``: a resumed
run masks as the unbroken one, DDP ranks (other clips) draw other masks, and nothing else's random stream moves.
The masks fall on each clip's frames, never on its padding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SpecAugment:
    """Time and frequency masks on the training log-mel (all off by default).

    Args:
        mask_time_prob: about this share of a clip's frames is masked, in spans of ``mask_time_length`` frames
            (10 ms each); 0: no time masks.
        mask_time_length: frames per time mask.
        mask_time_min_masks: time masks per clip at least, when ``mask_time_prob`` is above 0.
        mask_feature_prob: about this share of the mel bins is masked, in bands of ``mask_feature_length``.
        mask_feature_length: mel bins per frequency mask.
        mask_feature_min_masks: frequency masks per clip at least, when ``mask_feature_prob`` is above 0.
    """

    mask_time_prob: float = 0.0
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.mask_time_prob <= 1 and 0 <= self.mask_feature_prob <= 1):
            raise ValueError("model.spec_augment's mask_time_prob and mask_feature_prob must be in [0, 1]")
        if self.mask_time_length < 1 or self.mask_feature_length < 1:
            raise ValueError("model.spec_augment's mask_time_length and mask_feature_length must be at least 1")

    @property
    def active(self) -> bool:
        return self.mask_time_prob > 0 or self.mask_feature_prob > 0

    def __call__(self, features: torch.Tensor, frames: Sequence[int], seeds: Sequence[Sequence[int]]) -> torch.Tensor:
        """A masked copy of ``features`` (batch, mel bins, frames); row r's clip spans its first ``frames[r]``
        frames, and its masks are drawn from ``seeds[r]``."""
        masked = features.clone()
        bins = features.shape[1]
        for row, (length, seed) in enumerate(zip(frames, seeds, strict=True)):
            rng = np.random.default_rng(list(seed))
            length = min(int(length), features.shape[-1])
            if self.mask_time_prob > 0:
                for start in _spans(rng, length, self.mask_time_prob, self.mask_time_length, self.mask_time_min_masks):
                    masked[row, :, start : min(start + self.mask_time_length, length)] = 0
            if self.mask_feature_prob > 0:
                spans = _spans(rng, bins, self.mask_feature_prob, self.mask_feature_length, self.mask_feature_min_masks)
                for start in spans:
                    masked[row, start : start + self.mask_feature_length, :] = 0
        return masked


def _spans(rng: np.random.Generator, length: int, prob: float, span: int, min_masks: int) -> list[int]:
    """Start positions of masks of ``span`` over ``length`` positions, as transformers counts them."""
    if length < span:
        return []
    count = max(math.floor(prob * length / span + rng.random()), min_masks)
    count = min(count, length // span, length - span + 1)
    return sorted(rng.choice(length - span + 1, size=count, replace=False).tolist())
