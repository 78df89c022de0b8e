from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler

from meta_kd_sr.data.paired import SampleKey
from meta_kd_sr.data.samplers import ResumableLoader, ShardedEvalSampler, TrainSampler


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


class _Keys(torch.utils.data.Dataset):
    """Returns the sample key itself: batches show exactly which items, epochs and streams were served."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, key: SampleKey) -> torch.Tensor:
        return torch.tensor([key.index, key.epoch, key.stream])


def _loader(items: int = 24, batch: int = 4, world: int = 1, rank: int = 0) -> ResumableLoader:
    sampler = TrainSampler(items, world, rank, seed=5)
    return ResumableLoader(_Keys(), batch_size=batch, sampler=sampler, drop_last=True)


def _epoch(loader: ResumableLoader, epoch: int) -> list[list[int]]:
    loader.sampler.set_epoch(epoch)
    return [b.tolist() for b in loader]


@pytest.mark.parametrize("done", [0, 1, 3, 5])
def test_resumable_loader_continues_where_the_saved_one_stopped(done):
    straight = _loader()
    reference = _epoch(straight, 1) + _epoch(straight, 2)
    first = _loader()
    first.sampler.set_epoch(1)
    served = [b.tolist() for _, b in zip(range(done), first)]  # a run stopped after `done` batches
    state = first.state_dict()
    assert state == {"epoch": 1, "batches": done, "batch_size": 4, "items_per_rank": 24}
    resumed = _loader()
    resumed.load_state_dict(state)
    rest = _epoch(resumed, 1) + _epoch(resumed, 2)  # the restored position applies to the next pass only
    assert served + rest == reference


def test_resumable_loader_after_a_closed_epoch_starts_the_next_one_whole():
    first = _loader()
    _epoch(first, 0)
    resumed = _loader()
    resumed.load_state_dict(first.state_dict())  # {"epoch": 0, "batches": 6}: the epoch was done
    assert _epoch(resumed, 1) == _epoch(_loader(), 1)


def test_resumable_loader_shards_resume_like_one_process():
    """Two ranks resumed after 2 batches serve the items one process resumed after 2 batches of 8 serves."""
    single = _loader(batch=8)
    single.load_state_dict({**single.state_dict(), "epoch": 0, "batches": 2, "items_per_rank": 24})
    ranks = []
    for rank in range(2):
        loader = _loader(batch=4, world=2, rank=rank)
        loader.load_state_dict({"epoch": 0, "batches": 2, "batch_size": 4, "items_per_rank": 12})
        ranks.append(_epoch(loader, 0))
    merged = [sorted(a + b) for a, b in zip(*ranks)]
    assert merged == [sorted(b) for b in _epoch(single, 0)]


def test_resumable_loader_refuses_a_state_of_other_data():
    with pytest.raises(
        ValueError, match=r"served as \{'batch_size': 8, 'items_per_rank': 24\} but this run serves"
    ):
        _loader().load_state_dict({"epoch": 0, "batches": 2, "batch_size": 8, "items_per_rank": 24})


@pytest.mark.parametrize(("done", "inside"), [(0, False), (1, True), (5, True), (6, False)])
def test_resumable_loader_knows_a_state_stopped_inside_its_pass(done, inside):
    loader = _loader()  # 24 items, batch 4: 6 batches a pass
    loader.sampler.set_epoch(2)
    for _ in zip(range(done), loader):
        pass
    state = loader.state_dict()
    assert ResumableLoader.stopped_inside(state, 2) is inside
    assert ResumableLoader.stopped_inside(state, 3) is False  # another epoch's pass
    assert ResumableLoader.stopped_inside({"epoch": 2, "batches": 3}, 2) is False  # not a loader's state
    assert ResumableLoader.stopped_inside(None, 2) is False
