"""Batching: the padding collator and an evaluation sampler that never repeats a sample under DDP."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

IGNORE_INDEX = -100


def has_clips(batch: dict | None) -> bool:
    """Whether a batch holds any clip to train on or decode (all of its clips may have been skipped)."""
    return batch is not None and "input_features" in batch


@dataclass
class SpeechCollator:
    """Stack log-mel features and pad labels with -100.

    Same semantics as the tutorial's ``DataCollatorSpeechSeq2SeqWithPadding``: when every row starts with the
    decoder-start token it is cut, because the model prepends it again when it shifts the labels right.
    Items that failed to load (``None``, or a dict with a ``skip`` reason) are dropped and listed under ``skipped``
    (clip id -> reason), so the steps can count them; a batch whose clips all failed holds ``skipped`` alone
    (see :func:`has_clips`). Items for prediction carry no labels: the batch then has a (B, 0) label tensor.
    """

    decoder_start_token_id: int

    def __call__(self, items: list[dict | None]) -> dict | None:
        skipped = {item["id"]: item["skip"] for item in items if item is not None and "skip" in item}
        items = [item for item in items if item is not None and "skip" not in item]
        for item in items:  # clips left out of a packed window
            skipped.update(item.get("skipped", {}))
        if not items:
            return {"skipped": skipped} if skipped else None
        features = torch.from_numpy(np.stack([item["input_features"] for item in items]))
        longest = max(len(item["labels"]) for item in items)
        labels = torch.full((len(items), longest), IGNORE_INDEX, dtype=torch.long)
        for row, item in enumerate(items):
            labels[row, : len(item["labels"])] = torch.as_tensor(item["labels"], dtype=torch.long)
        if longest and bool((labels[:, 0] == self.decoder_start_token_id).all()):
            labels = labels[:, 1:]
        return {
            "input_features": features,
            "labels": labels,
            # seconds of audio per clip (the decoding budget); a full window for items that do not say
            "duration": torch.as_tensor([item.get("duration", 30.0) for item in items], dtype=torch.float32),
            "index": torch.as_tensor([item["index"] for item in items], dtype=torch.long),
            "id": [item["id"] for item in items],
            "clips": sum(item.get("clips", 1) for item in items),  # a packed window holds several
            "skipped": skipped,
        }


class UnrepeatedDistributedSampler(DistributedSampler):
    """Shard ``i::world_size`` without the padding ``DistributedSampler`` adds, so metrics see each clip once.

    Ranks may get one batch more or less; evaluation has no collective inside a step, so that is safe.
    Lightning keeps a sampler that is already a ``DistributedSampler`` instead of replacing it.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))  # type: ignore[arg-type]
        self.total_size = len(dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples
