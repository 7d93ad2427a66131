"""What a DataLoader worker runs: one clip decoded and featurized per item. Light on imports on purpose (no
Lightning): the workers' fork server imports this module before the trainer needs its first batch."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from torch.utils.data import Dataset
from transformers import WhisperFeatureExtractor

from whisper_lora_pl.data.audio import SAMPLING_RATE, AudioError, load_audio
from whisper_lora_pl.data.augment import Augmenter
from whisper_lora_pl.data.features import log_mel
from whisper_lora_pl.data.sources import Example

log = logging.getLogger(__name__)


@dataclass
class PreparedSplit:
    """The examples that passed the filters, their label ids, and what was skipped and why."""

    examples: Sequence[Example]  #: a list, or columns for a corpus in shards (``tables.ShardExamples``)
    labels: Sequence[list[int]]  #: ``tables.TokenTable`` once prepared
    durations: Sequence[float] = field(default_factory=list)  #: seconds, from the headers (for the duration buckets)
    skipped: Counter = field(default_factory=Counter)
    other: int = 0  #: the last ``other`` examples are other speech labelled by the base (``data.other_speech``)

    def summary(self, name: str) -> str:
        skips = ", ".join(f"{count} {why}" for why, count in sorted(self.skipped.items())) or "none"
        other = f" (of them {self.other} of other speech, labelled by the base)" if self.other else ""
        return f"{name}: {len(self.examples)} clips kept{other}, skipped: {skips}"


class SpeechDataset(Dataset):
    """Decodes and featurizes one clip per item. A clip that fails (unreadable, non-finite, nothing left) is warned
    about and becomes ``{"index", "id", "skip": reason}``, which the collator counts instead of batching.

    With an ``augmenter`` (training only), items are asked for as ``(index, epoch)`` and the clip's audio is
    augmented from that pair before its log-mel."""

    def __init__(
        self, split: PreparedSplit, feature_extractor: WhisperFeatureExtractor, augmenter: Augmenter | None = None
    ) -> None:
        self.split = split
        self.feature_extractor = feature_extractor
        self.augmenter = augmenter

    def __len__(self) -> int:
        return len(self.split.examples)

    def wave(self, index: int) -> np.ndarray:
        return load_audio(self.split.examples[index].audio, SAMPLING_RATE)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        index, epoch = item if isinstance(item, tuple) else (item, None)
        example = self.split.examples[index]
        try:
            wave = load_audio(example.audio, SAMPLING_RATE)
            if self.augmenter is not None and epoch is not None:
                wave = self.augmenter(wave, epoch, index)
            features = log_mel(self.feature_extractor, wave)
        except AudioError as err:
            log.warning("skipping clip %s: %s", example.id, err)
            return {"index": index, "id": example.id, "skip": err.reason}
        return {
            "input_features": features,
            "labels": self.split.labels[index],
            "duration": len(wave) / SAMPLING_RATE,  # sets the clip's decoding budget
            "index": index,
            "id": example.id,
        }
