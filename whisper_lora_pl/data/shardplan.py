"""Training batches from shards (:mod:`whisper_lora_pl.data.shar`): each rank and each of its DataLoader workers reads
its own shards, dealt out afresh every epoch, and a batch holds clips of similar duration from a window of its
worker's stream. Every batch of an epoch is a pure function of (seed, epoch) and the shards' metadata, planned in the
main process without reading audio, so a run resumed mid-epoch skips the batches already taken (``StatefulDataLoader``
counts them) and reads from its next batch on: nothing of the epoch is replayed."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from whisper_lora_pl.data.buckets import EpochBatches


class ShardBatches(EpochBatches):
    """Yields this rank's batches (lists of clip indices) of one epoch.

    Each epoch the shards are shuffled (from ``seed`` and the epoch) and dealt, one at a time, to the slot (rank,
    worker) holding the fewest clips so far, so the slots' loads differ by at most one shard. A slot reads its shards in
    turn; each ``window`` clips of its stream are shuffled, sorted by duration and cut into batches of ``batch_size``
    clips (or of as many as fit ``batch_seconds`` once padded to the batch's longest), and the window's batches come in
    shuffled order: duration buckets within a shuffle buffer, as lhotse's ``DynamicBucketingSampler`` makes them. A
    rank takes its workers' batches in turn, which is the order a DataLoader hands batches to its workers, so worker w
    reads only slot w's shards. Every slot yields as many batches as the fullest (a slot with fewer repeats its first
    ones, as ``DistributedSampler`` pads: at most about one shard's worth), so all ranks take the same number of steps
    and the workers' turns never shift.

    Seeding, the epoch and resume as every training sampler (:class:`~whisper_lora_pl.data.buckets.EpochBatches`).
    """

    def __init__(
        self,
        shards: Sequence[int],
        durations: Sequence[float],
        batch_size: int,
        *,
        batch_seconds: float | None = None,
        window: int = 1000,
        num_workers: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        current_epoch: Callable[[], int] = lambda: 0,
        epoch_tags: bool = False,
    ) -> None:
        if window < 1 or len(shards) != len(durations):
            raise ValueError("the shard window must be at least 1, and every clip needs its shard number")
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
        self.window, self.workers = window, max(1, num_workers)
        numbers = np.asarray(shards, dtype=np.int64)
        order = np.argsort(numbers, kind="stable")  # each shard's clips in their order in the shard
        cuts = np.flatnonzero(np.diff(numbers[order])) + 1
        self.shards = [group for group in np.split(order, cuts) if len(group)]
        self._plans: dict[int, list[list[list[int]]]] = {}

    def slots(self, epoch: int) -> list[list[int]]:
        """The shards (places in ``self.shards``) each slot ``rank * workers + worker`` reads in ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch])
        count = self.num_replicas * self.workers
        dealt: list[list[int]] = [[] for _ in range(count)]
        loads = [0] * count
        for shard in rng.permutation(len(self.shards)).tolist():
            slot = loads.index(min(loads))
            dealt[slot].append(shard)
            loads[slot] += len(self.shards[shard])
        return dealt

    def plan(self, epoch: int) -> list[list[list[int]]]:
        """Per rank, its batches of ``epoch`` in the order it takes them (all ranks equally many)."""
        if epoch not in self._plans:
            dealt = self.slots(epoch)
            streams = [
                self._slot_batches(shards, np.random.default_rng([self.seed, epoch, slot]))
                for slot, shards in enumerate(dealt)
            ]
            longest = max(len(stream) for stream in streams)
            streams = [_padded(stream, longest) for stream in streams]
            ranks = [
                [
                    batch
                    for turn in zip(*streams[r * self.workers : (r + 1) * self.workers], strict=True)
                    for batch in turn
                ]
                for r in range(self.num_replicas)
            ]
            self._plans = {epoch: ranks}  # one epoch kept
        return self._plans[epoch]

    def _slot_batches(self, shards: list[int], rng: np.random.Generator) -> list[list[int]]:
        stream = np.concatenate([self.shards[s] for s in shards]) if shards else np.zeros(0, dtype=np.int64)
        batches: list[list[int]] = []
        for start in range(0, len(stream), self.window):
            window = rng.permutation(stream[start : start + self.window])
            window = window[np.argsort(self.durations[window], kind="stable")]
            cut = self._cut(window)
            batches += [cut[i] for i in rng.permutation(len(cut))]
        return batches

    def _cut(self, window: np.ndarray) -> list[list[int]]:
        """Consecutive clips of a duration-sorted window into batches."""
        if self.batch_seconds is None:
            return [window[i : i + self.batch_size].tolist() for i in range(0, len(window), self.batch_size)]
        batches, current = [], []
        for index in window.tolist():  # sorted: the clip being added is the batch's longest
            fits = (len(current) + 1) * self.durations[index] <= self.batch_seconds
            if current and (not fits or len(current) == self.batch_size):
                batches.append(current)
                current = []
            current.append(index)
        return batches + ([current] if current else [])

    def rank_batches(self, epoch: int) -> list[list[int]]:
        return self.plan(epoch)[self.rank]

    def __len__(self) -> int:
        return len(self.plan(self.current_epoch())[self.rank])


def _padded(batches: list[list[int]], steps: int) -> list[list[int]]:
    """A slot's batches, its first ones repeated up to ``steps``."""
    if not batches:
        raise ValueError(
            "a DataLoader worker would have no training clips: the split has fewer shards than ranks x workers "
            "(data.num_workers); write smaller shards (sharwriter --shard-size) or use fewer workers"
        )
    return [batches[i % len(batches)] for i in range(steps)]
