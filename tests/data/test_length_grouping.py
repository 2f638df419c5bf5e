"""Length-grouped sampling: less padding, a permutation per (seed, epoch), exact resume."""

import random

import pytest

from vlmkit.data.length_grouping import LengthGroupedSampler
from vlmkit.data.sampling import EpochSampler


def _lengths(n=400, seed=0):
    rng = random.Random(seed)
    return [rng.choice([rng.randint(20, 60), rng.randint(200, 500)]) for _ in range(n)]


def _padding(order, lengths, batch):
    batches = [order[i : i + batch] for i in range(0, len(order) - batch + 1, batch)]
    slots = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / slots


def test_every_index_once_and_far_less_padding_than_random():
    lengths = _lengths()
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))
    random_order = list(EpochSampler(len(lengths), seed=3))
    grouped, shuffled = _padding(order, lengths, 8), _padding(random_order, lengths, 8)
    assert shuffled > 0.3
    assert grouped < shuffled / 3


def test_deterministic_per_seed_and_epoch_and_differs_across_epochs():
    lengths = _lengths()
    a = LengthGroupedSampler(lengths, 8, seed=1)
    b = LengthGroupedSampler(lengths, 8, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert list(LengthGroupedSampler(lengths, 8, seed=2)) != first


def test_longest_batch_first():
    lengths = _lengths()
    order = list(LengthGroupedSampler(lengths, 8, seed=0))
    assert max(lengths[i] for i in order[:8]) == max(lengths)


def test_resume_mid_epoch_continues_the_same_order():
    lengths = _lengths()
    sampler = LengthGroupedSampler(lengths, 8, seed=5, world_size=2)
    sampler.set_epoch(2)
    full = list(sampler)
    assert len(sampler) == len(lengths)
    resumed = LengthGroupedSampler(lengths, 8, seed=5, world_size=2)
    resumed.resume_at(2, 48)
    assert list(resumed) == full[48:]
    assert len(resumed) == len(lengths) - 48
    resumed.set_epoch(3)  # a new epoch starts from the beginning again
    assert len(list(resumed)) == len(lengths)


def test_global_batches_are_grouped_across_ranks():
    lengths = _lengths()
    order = list(LengthGroupedSampler(lengths, 4, seed=0, world_size=2))
    # 4 samples x 2 ranks: each group of 8 consecutive indices is one step; their lengths stay close.
    random_order = list(EpochSampler(len(lengths), seed=0))
    assert _padding(order, lengths, 8) < _padding(random_order, lengths, 8) / 3


def test_bad_batch_size_is_rejected():
    with pytest.raises(ValueError, match="batch_size"):
        LengthGroupedSampler([1, 2, 3], 0, seed=0)
