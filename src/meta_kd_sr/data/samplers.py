"""Samplers that shard data over ranks without a process group: seeded training order, unpadded evaluation.

Both subclass ``DistributedSampler`` so that Lightning never wraps them in a second distributed sampler,
even when a Trainer is left at ``use_distributed_sampler=True``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sized
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from meta_kd_sr.data.paired import SampleKey, seeded_generator


def _indices(n: int) -> Dataset[int]:
    """``range(n)`` as the dataset a ``DistributedSampler`` shards (it only takes its length)."""
    return cast("Dataset[int]", range(n))


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
            _indices(dataset_len),
            num_replicas=num_replicas,
            rank=rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
        self.stream = stream
        self._skip = 0

    def skip_next(self, n_items: int) -> None:
        """Start the next pass ``n_items`` into this epoch's shard (resume mid-epoch); later ones at 0."""
        if not 0 <= n_items <= self.num_samples:
            raise ValueError(f"cannot skip {n_items} items of an epoch of {self.num_samples} per rank")
        self._skip = n_items

    def __iter__(self) -> Iterator[SampleKey]:
        skip, self._skip = self._skip, 0
        generator = seeded_generator(self.seed, self.stream, self.epoch)
        order = torch.randperm(len(cast(Sized, self.dataset)), generator=generator).tolist()[
            : self.total_size
        ]
        for index in order[self.rank :: self.num_replicas][skip:]:
            yield SampleKey(index, self.epoch, self.seed, self.stream)


class ResumableLoader(DataLoader):
    """A training DataLoader over a :class:`TrainSampler` whose place in the epoch survives a resume.

    Lightning saves ``state_dict()`` in every checkpoint (it is a stateful loader to Lightning) and calls
    ``load_state_dict`` before iterating again on resume: the next pass then skips the batches that the
    checkpointed run had trained on, so a run killed mid-epoch and resumed sees the same batches, in the same
    order, as one that never stopped. Lightning fetches no batch ahead from a loader with a length (no
    prefetch), so the batches served by this pass are exactly the batches trained on.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, TrainSampler) or self.batch_size is None or not self.drop_last:
            raise ValueError("ResumableLoader needs a TrainSampler, a batch_size and drop_last=True")
        self._served = 0  # batches handed out by the current pass
        self._restored: dict[str, int] | None = None
        self.train_sampler: TrainSampler = self.sampler  # the same object, typed
        self.items_per_batch: int = self.batch_size

    def __iter__(self) -> Iterator[Any]:
        # A generator: its body runs at the first batch, after Lightning's set_epoch for this epoch.
        skip = self._take_restored_position()
        self.train_sampler.skip_next(skip * self.items_per_batch)
        self._served = skip
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def _take_restored_position(self) -> int:
        state, self._restored = self._restored, None
        if state is None or state["epoch"] != self.train_sampler.epoch:
            return 0  # a fresh run, or the checkpoint closed its epoch and this is the next one
        return state["batches"] % len(self)  # a whole pass done: a shorter loader cycling starts again

    def state_dict(self) -> dict[str, int]:
        """The position of this loader: epoch, batches served in this pass, and the shapes that fix it."""
        return {
            "epoch": int(self.train_sampler.epoch),
            "batches": self._served,
            "batch_size": int(self.items_per_batch),
            "items_per_rank": len(self.train_sampler),
        }

    @staticmethod
    def stopped_inside(state: Any, epoch: int) -> bool:
        """Whether a saved :meth:`state_dict` lies part-way through pass ``epoch`` (some batches, not all).

        A pass holds ``items_per_rank // batch_size`` batches (``drop_last``). Anything that is not such a
        state (another loader's) is not.
        """
        keys = ("epoch", "batches", "batch_size", "items_per_rank")
        if not isinstance(state, Mapping) or not all(k in state for k in keys):
            return False
        per_pass = state["items_per_rank"] // state["batch_size"]
        return state["epoch"] == epoch and 0 < state["batches"] < per_pass

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at ``state``; refuses a checkpoint whose batches or data differ from this loader's."""
        mine = {"batch_size": int(self.items_per_batch), "items_per_rank": len(self.train_sampler)}
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            raise ValueError(
                f"the checkpoint's training data was served as {theirs} but this run serves {mine}: resume "
                "with the same data, batch size and number of devices"
            )
        self._restored = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}


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
        super().__init__(_indices(dataset_len), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.total_size = dataset_len
        self.num_samples = len(range(rank, dataset_len, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


def _check_shard(num_replicas: int, rank: int) -> None:
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas=}, {rank=}")
