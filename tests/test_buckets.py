"""Duration-bucketed training batches: similar durations per batch, every clip once, deterministic, DDP in step."""

from collections import Counter

import numpy as np
import pytest

from whisper_lora_pl.data.buckets import DurationBuckets

DURATIONS = np.random.default_rng(0).uniform(1.5, 10.0, 203).round(2).tolist()


def epoch(sampler: DurationBuckets, number: int = 0) -> list[list[int]]:
    sampler.current_epoch = lambda: number
    return list(sampler)


def test_every_clip_once_in_batches_of_similar_duration():
    sampler = DurationBuckets(DURATIONS, batch_size=8, num_buckets=10)
    batches = epoch(sampler)
    assert len(batches) == len(sampler) == 10 * 3  # 20 or 21 clips a bucket: 3 batches of 6-7
    assert sorted(i for b in batches for i in b) == list(range(len(DURATIONS)))
    assert max(len(b) for b in batches) <= 8
    spread = [max(DURATIONS[i] for i in b) - min(DURATIONS[i] for i in b) for b in batches]
    mixed = [max(DURATIONS[i] for i in b) - min(DURATIONS[i] for i in b) for b in np.array_split(np.arange(203), 30)]
    assert max(spread) < 1.2 < float(np.median(mixed))  # a bucket spans a tenth of the range; random batches most


def test_one_bucket_is_a_plain_shuffle():
    batches = epoch(DurationBuckets(DURATIONS, batch_size=8, num_buckets=1))
    assert len(batches) == 26 and sorted(i for b in batches for i in b) == list(range(203))


def test_the_order_is_a_function_of_seed_and_epoch():
    first = epoch(DurationBuckets(DURATIONS, 8, seed=3), 0)
    assert epoch(DurationBuckets(DURATIONS, 8, seed=3), 0) == first
    assert epoch(DurationBuckets(DURATIONS, 8, seed=3), 1) != first
    assert epoch(DurationBuckets(DURATIONS, 8, seed=4), 0) != first


def test_batch_seconds_bounds_the_padded_audio_of_each_batch():
    sampler = DurationBuckets(DURATIONS, batch_size=1000, batch_seconds=40.0, num_buckets=10)
    batches = epoch(sampler)
    padded = [len(b) * max(DURATIONS[i] for i in b) for b in batches]
    assert max(padded) <= 40.0 and sorted(i for b in batches for i in b) == list(range(203))
    sizes = {len(b) for b in batches}
    assert max(sizes) >= 2 * min(sizes)  # short clips fill a batch with many, long ones with few


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_take_batches_of_one_bucket_at_each_step_and_as_many_steps(world):
    ranks = [DurationBuckets(DURATIONS, 8, num_buckets=10, num_replicas=world, rank=r, seed=1) for r in range(world)]
    per_rank = [epoch(sampler, 2) for sampler in ranks]
    assert len({len(batches) for batches in per_rank}) == 1 and len(per_rank[0]) == len(ranks[0])
    bucket_of = {int(i): n for n, bucket in enumerate(ranks[0].buckets) for i in bucket}
    for step in zip(*per_rank, strict=True):
        assert all(len(batch) > 0 for batch in step)
        assert len({bucket_of[i] for batch in step for i in batch}) == 1
    seen = Counter(i for batches in per_rank for batch in batches for i in batch)
    assert set(seen) == set(range(203)) and max(seen.values()) <= 2  # repeats fill a short last group only
    assert sum(seen.values()) - 203 < world * len(ranks[0].buckets)


def test_a_split_smaller_than_the_ranks_still_gives_every_rank_a_clip():
    ranks = [DurationBuckets([2.0, 3.0, 4.0], 8, num_replicas=4, rank=r) for r in range(4)]
    batches = [epoch(sampler) for sampler in ranks]
    assert all(len(b) == 1 and len(b[0]) == 1 for b in batches)  # one step, one clip each, one clip twice
    assert {b[0][0] for b in batches} == {0, 1, 2}


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="batch_size and num_buckets"):
        DurationBuckets(DURATIONS, 8, batch_seconds=0.0)
