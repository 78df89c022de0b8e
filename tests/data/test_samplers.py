from __future__ import annotations

import pytest
from torch.utils.data import DistributedSampler

from meta_kd_sr.data.paired import SampleKey
from meta_kd_sr.data.samplers import ShardedEvalSampler, TrainSampler


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("length", [0, 1, 2, 5, 7, 10])
def test_sharded_eval_covers_every_index_once(world, length):
    shards = [list(ShardedEvalSampler(length, world, rank)) for rank in range(world)]
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(length))  # each index exactly once, no padding duplicates
    for rank, shard in enumerate(shards):
        assert shard == list(range(rank, length, world))
        assert len(ShardedEvalSampler(length, world, rank)) == len(shard)


def test_sharded_eval_is_a_distributed_sampler_so_lightning_keeps_it():
    assert isinstance(ShardedEvalSampler(5, 2, 1), DistributedSampler)
    assert list(ShardedEvalSampler(7, 3, 2)) == [2, 5]


@pytest.mark.parametrize(("world", "rank"), [(0, 0), (2, 2), (2, -1)])
def test_bad_shard_arguments(world, rank):
    with pytest.raises(ValueError, match="need num_replicas >= 1 and 0 <= rank < num_replicas"):
        ShardedEvalSampler(4, world, rank)
    with pytest.raises(ValueError, match="need num_replicas >= 1"):
        TrainSampler(4, world, rank)


def test_train_sampler_yields_keys_of_its_epoch_and_stream():
    sampler = TrainSampler(6, seed=3, stream=1)
    sampler.set_epoch(2)
    keys = list(sampler)
    assert all(isinstance(k, SampleKey) and (k.epoch, k.seed, k.stream) == (2, 3, 1) for k in keys)
    assert sorted(k.index for k in keys) == list(range(6))


def test_train_sampler_order_depends_on_epoch_seed_and_stream():
    def order(epoch=0, seed=0, stream=0):
        sampler = TrainSampler(50, seed=seed, stream=stream)
        sampler.set_epoch(epoch)
        return [k.index for k in sampler]

    assert order() == order()
    assert len({tuple(order(epoch=1)), tuple(order(seed=1)), tuple(order(stream=1)), tuple(order())}) == 4


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_split_the_single_process_batches(world):
    length, per_rank = 23, 2
    single = [k.index for k in TrainSampler(length, 1, 0, seed=9)]
    shards = [[k.index for k in TrainSampler(length, world, r, seed=9)] for r in range(world)]
    assert all(len(s) == length // world for s in shards)  # drop_last: equal shards
    assert not set(shards[0]) & set(shards[1])
    for b in range(len(shards[0]) // per_rank):
        global_batch = single[b * world * per_rank : (b + 1) * world * per_rank]
        ranks_batch = [i for s in shards for i in s[b * per_rank : (b + 1) * per_rank]]
        assert sorted(ranks_batch) == sorted(global_batch)


def test_train_sampler_needs_one_item_per_rank():
    with pytest.raises(ValueError, match="cannot shard 1 training items over 2 ranks"):
        TrainSampler(1, 2, 0)
