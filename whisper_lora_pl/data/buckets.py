"""Training batches of clips of similar duration, so that a batch cut after its longest clip (``encoder_length:
dynamic``) holds little padding. lhotse's ``DynamicBucketingSampler`` is the model; this one is exact on resume and
under DDP, because every batch of an epoch is a pure function of (seed, epoch)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from torch.utils.data import Dataset, DistributedSampler


class EpochBatches(DistributedSampler):
    """What the training samplers share: every batch of an epoch a pure function of (seed, epoch), the epoch read from
    ``current_epoch`` when its iteration starts (Lightning's ``set_epoch`` is one ahead after a run stopped mid-epoch
    is resumed), and ``(index, epoch)`` pairs for a dataset that augments. A ``DistributedSampler`` so that Lightning
    keeps it instead of sharding again; a resumed epoch skips the batches already taken (``StatefulDataLoader``
    counts them). Subclasses say which batches a rank takes (``rank_batches``)."""

    def __init__(
        self,
        durations: Sequence[float],
        batch_size: int,
        *,
        batch_seconds: float | None,
        num_replicas: int,
        rank: int,
        seed: int,
        current_epoch: Callable[[], int],
        epoch_tags: bool,
    ) -> None:
        if batch_size < 1 or (batch_seconds is not None and batch_seconds <= 0):
            raise ValueError("batch_size must be at least 1, batch_seconds above 0")
        super().__init__(range(len(durations)), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.durations = np.asarray(durations, dtype=np.float64)
        self.batch_size, self.batch_seconds = batch_size, batch_seconds
        self.current_epoch, self.epoch_tags = current_epoch, epoch_tags

    def set_epoch(self, epoch: int) -> None:
        """Ignored: see the class docstring."""

    def rank_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch``, in order."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        self.epoch = self.current_epoch()
        batches = self.rank_batches(self.epoch)
        if self.epoch_tags:
            batches = [[(index, self.epoch) for index in batch] for batch in batches]
        return iter(batches)


class DurationBuckets(EpochBatches):
    """Yields this rank's batches (lists of indices) of one epoch.

    The clips are sorted by duration and cut into ``num_buckets`` buckets of equal count. Each epoch, every bucket is
    shuffled (from ``seed`` and the epoch) and cut into batches of at most ``batch_size`` clips, or, with
    ``batch_seconds``, of at most as many clips as fit that many seconds once padded to the bucket's longest. Each
    bucket's batches come in groups of ``num_replicas``: a step takes one group, rank r its r-th batch, so every rank
    takes a batch of the same bucket and all ranks take the same number of steps (a bucket too small for its groups
    repeats some of its clips, as ``DistributedSampler`` does). The steps are shuffled across buckets.

    Seeding, the epoch and resume as every training sampler (:class:`EpochBatches`): a resumed epoch yields the
    same batches as the unbroken run.
    """

    def __init__(
        self,
        durations: Sequence[float],
        batch_size: int,
        *,
        batch_seconds: float | None = None,
        num_buckets: int = 10,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        current_epoch: Callable[[], int] = lambda: 0,
        epoch_tags: bool = False,
    ) -> None:
        if batch_size < 1 or num_buckets < 1 or (batch_seconds is not None and batch_seconds <= 0):
            raise ValueError("batch_size and num_buckets must be at least 1, batch_seconds above 0")
        super().__init__(
            durations,
            batch_size,
            batch_seconds=batch_seconds,
            num_replicas=num_replicas,
            rank=rank,
            seed=seed,
            current_epoch=current_epoch,
            epoch_tags=epoch_tags,
        )
        order = np.argsort(self.durations, kind="stable")
        wanted = min(num_buckets, max(1, len(order) // max(1, self._estimated_cap() * num_replicas)))
        self.buckets = [bucket for bucket in np.array_split(order, wanted) if len(bucket)]
        self.batches = [self._batches(bucket) for bucket in self.buckets]  # per bucket: a multiple of num_replicas

    def _estimated_cap(self) -> int:
        return self._cap(float(np.median(self.durations))) if len(self.durations) else self.batch_size

    def _batches(self, bucket: np.ndarray) -> int:
        count = math.ceil(len(bucket) / self._cap(float(self.durations[bucket].max())))
        return math.ceil(count / self.num_replicas) * self.num_replicas

    def _cap(self, longest: float) -> int:
        """Clips per batch in a bucket whose longest clip lasts ``longest`` seconds."""
        if self.batch_seconds is None:
            return self.batch_size
        return max(1, math.floor(self.batch_seconds / max(longest, 1e-6)))

    def steps(self, epoch: int) -> list[list[list[int]]]:
        """Every step of ``epoch``: per step, one batch per rank."""
        rng = np.random.default_rng([self.seed, epoch])
        steps = []
        for bucket, count in zip(self.buckets, self.batches, strict=True):
            clips = rng.permutation(bucket)
            if count > len(clips):  # fewer clips than batches: repeat some, so that no rank gets an empty batch
                clips = np.resize(clips, count)
            batches = [batch.tolist() for batch in np.array_split(clips, count)]
            steps += [batches[i : i + self.num_replicas] for i in range(0, count, self.num_replicas)]
        return [steps[i] for i in rng.permutation(len(steps))]

    def rank_batches(self, epoch: int) -> list[list[int]]:
        return [step[self.rank] for step in self.steps(epoch)]

    def __len__(self) -> int:
        return sum(self.batches) // self.num_replicas


class Batches(Dataset):
    """``dataset`` read a batch at a time: the DataLoader passes a sampler's list of indices (``batch_size=None``)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, indices: list | int) -> list:
        if isinstance(indices, int):  # Lightning's overfit_batches swaps the sampler for a sequential one
            indices = [indices]
        return [self.dataset[index] for index in indices]

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]
