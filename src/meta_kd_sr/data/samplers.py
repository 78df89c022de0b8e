"""Samplers that shard data over ranks without a process group: seeded training order, unpadded evaluation.

Both subclass ``DistributedSampler`` so that Lightning never wraps them in a second distributed sampler,
even when a Trainer is left at ``use_distributed_sampler=True``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler

from meta_kd_sr.data.paired import SampleKey, seeded_generator


class TrainSampler(DistributedSampler):
    """Shuffled training order sharded over ranks like ``DistributedSampler(shuffle=True, drop_last=True)``.

    Each epoch draws one permutation of ``range(dataset_len)`` from ``(seed, stream, epoch)``, drops the tail
    that does not divide by ``num_replicas`` and gives rank ``r`` the positions ``r, r + W, ...``. Consecutive
    per-rank batches of size ``b`` on ``W`` ranks therefore hold exactly the samples of the single-process
    batches of size ``W * b``. It yields :class:`SampleKey` ``(index, epoch, seed, stream)``, from which the
    dataset derives each item's random crop; call ``set_epoch`` at the start of every epoch (Lightning's fit
    loop does so for every training DataLoader).

    Args:
        dataset_len: number of items.
        num_replicas: world size.
        rank: this process's global rank.
        seed: base seed of the order and of the per-item randomness.
        stream: separates independent streams with the same seed (e.g. 0 train, 1 meta).
    """

    def __init__(
        self, dataset_len: int, num_replicas: int = 1, rank: int = 0, seed: int = 0, stream: int = 0
    ):
        _check_shard(num_replicas, rank)
        if dataset_len < num_replicas:
            raise ValueError(f"cannot shard {dataset_len} training items over {num_replicas} ranks")
        if seed < 0 or stream < 0:
            raise ValueError(f"seed and stream must be >= 0, got seed={seed}, stream={stream}")
        super().__init__(
            range(dataset_len), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.stream = stream

    def __iter__(self) -> Iterator[SampleKey]:
        generator = seeded_generator(self.seed, self.stream, self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()[: self.total_size]
        for index in order[self.rank :: self.num_replicas]:
            yield SampleKey(index, self.epoch, self.seed, self.stream)


class ShardedEvalSampler(DistributedSampler):
    """Unpadded evaluation shard: rank ``r`` of ``W`` gets indices ``r, r + W, r + 2W, ...`` in order.

    Every index is evaluated exactly once over all ranks (``DistributedSampler`` would pad with duplicates
    and bias averaged metrics); ranks may get one item more or less than each other.

    Args:
        dataset_len: number of items.
        num_replicas: world size.
        rank: this process's global rank.
    """

    def __init__(self, dataset_len: int, num_replicas: int = 1, rank: int = 0):
        _check_shard(num_replicas, rank)
        if dataset_len < 0:
            raise ValueError(f"dataset_len must be >= 0, got {dataset_len}")
        super().__init__(range(dataset_len), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.total_size = dataset_len
        self.num_samples = len(range(rank, dataset_len, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


def _check_shard(num_replicas: int, rank: int) -> None:
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas=}, {rank=}")
