"""distributed.shard gives exactly the indices of torch's DistributedSampler, without torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from optgraph import distributed

CASES = [
    # num_samples, world_size, epoch, seed, shuffle, drop_last
    (10, 3, 0, 0, True, False),  # padded: 12 = 3 * 4, two indices repeated
    (10, 3, 1, 0, True, False),
    (10, 3, 0, 0, True, True),  # 9 = 3 * 3, one dropped
    (10, 3, 0, 0, False, False),
    (10, 3, 0, 0, False, True),
    (2, 5, 0, 0, True, False),  # more ranks than samples: the padding repeats them more than once
    (2, 5, 3, 7, False, False),
    (0, 2, 0, 0, True, False),
    (1, 1, 0, 0, True, False),
    (97, 4, 5, 1234, True, False),
    (1000, 8, 2, 2**32 + 3, True, False),  # torch seeds with the low 32 bits
    (1000, 7, 11, 42, True, True),
    (4096, 2, 0, 0, True, False),
]


@pytest.mark.parametrize(
    "num_samples, world, epoch, seed, shuffle, drop_last",
    CASES,
    ids=[f"n{c[0]}-w{c[1]}-e{c[2]}-s{c[3]}{'-shuffle' * c[4]}{'-drop' * c[5]}" for c in CASES],
)
def test_shard_is_distributed_samplers(num_samples, world, epoch, seed, shuffle, drop_last):
    data = range(num_samples)
    for rank in range(world):
        sampler = DistributedSampler(data, world, rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
        ours = distributed.shard(num_samples, epoch, seed, rank, world, shuffle=shuffle, drop_last=drop_last)
        assert ours.dtype == np.int64
        assert ours.tolist() == list(sampler), f"rank {rank}"


@pytest.mark.parametrize("num_samples, world", [(10, 3), (64, 4), (5, 8)])
def test_shards_cover_the_data_in_equal_lengths(num_samples, world):
    shards = [distributed.shard(num_samples, 2, 0, rank, world) for rank in range(world)]
    lengths = {len(s) for s in shards}
    assert lengths == {-(-num_samples // world)}
    together = np.concatenate(shards)
    assert set(together.tolist()) == set(range(num_samples)), "every sample is in some shard"
    assert len(together) - len(set(together.tolist())) == len(together) - num_samples, "only the padding repeats"
    if world <= num_samples:
        firsts = [set(s[: num_samples // world].tolist()) for s in shards]
        assert all(not (a & b) for i, a in enumerate(firsts) for b in firsts[i + 1 :]), "disjoint before the padding"


def test_each_epoch_has_its_own_permutation_and_every_seed_its_own():
    one = distributed.shard(50, 0, 0, 0, 2)
    assert not np.array_equal(one, distributed.shard(50, 1, 0, 0, 2))
    assert not np.array_equal(one, distributed.shard(50, 0, 1, 0, 2))
    assert np.array_equal(one, distributed.shard(50, 0, 0, 0, 2))


def test_the_randperm_twin_matches_torch():
    for n, seed in [(2, 0), (3, 1), (100, 5), (12345, 2**31 + 5)]:
        generator = torch.Generator().manual_seed(seed)
        assert distributed._randperm(n, seed) == torch.randperm(n, generator=generator).tolist()


def test_rank_and_world_default_to_a_single_process_outside_mpiexec():
    assert distributed.shard(6, 0, 0).tolist() == distributed.shard(6, 0, 0, 0, 1).tolist()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"num_samples": -1, "rank": 0, "world_size": 1}, ValueError, "num_samples must be non-negative, got -1"),
        (
            {"num_samples": 4, "rank": 2, "world_size": 2},
            ValueError,
            r"Invalid rank 2, rank should be in the interval \[0, 1\]",
        ),
        ({"num_samples": 4, "rank": 0, "world_size": 0}, ValueError, "world_size must be a positive integer, got 0"),
        ({"num_samples": 4.0, "rank": 0, "world_size": 1}, TypeError, "num_samples must be an integer, got 4.0"),
        ({"num_samples": 300_000_000, "rank": 0, "world_size": 1}, ValueError, "Shard larger data sets by files"),
    ],
    ids=["negative", "rank-out-of-range", "no-world", "float", "too-many-to-shuffle"],
)
def test_bad_arguments_are_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        distributed.shard(**kwargs)


@pytest.mark.parametrize("world, drop_last", [(3, False), (3, True), (4, False), (7, False)])
def test_deal_pads_and_deals_any_order_as_distributed_sampler(world, drop_last):
    order = np.random.default_rng(5).permutation(10)  # a trainer's own shuffle
    for rank in range(world):
        sampler = DistributedSampler(range(10), world, rank, shuffle=False, drop_last=drop_last)
        assert distributed.deal(order, rank, world, drop_last=drop_last).tolist() == [order[i] for i in sampler]
    assert (
        distributed.shard(10, 1, 2, 0, world).tolist()
        == distributed.deal(distributed._randperm(10, 3), 0, world).tolist()
    )


def test_any_rank_of_a_plain_session_is_the_flag_itself():
    assert distributed.any_rank(True, object()) is True and distributed.any_rank(0, object()) is False


def test_each_rank_of_a_machine_gets_its_own_gpu_unless_the_caller_chose_one():
    cpu, cuda = "CPUExecutionProvider", "CUDAExecutionProvider"
    assert distributed.gpu_per_rank([cuda, cpu], 3) == [(cuda, {"device_id": 3}), cpu]
    chosen = [(cuda, {"device_id": 0, "arena_extend_strategy": "kSameAsRequested"}), cpu]
    assert distributed.gpu_per_rank(chosen, 3) == chosen
    assert distributed.gpu_per_rank([cpu], 1) == [cpu]
