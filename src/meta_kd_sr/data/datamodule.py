"""LightningDataModule: train / meta / val / test loaders with their own distributed sampling.

Run the Trainer with ``use_distributed_sampler=False`` (our samplers subclass ``DistributedSampler``, so
Lightning leaves them alone in any case).

Randomness scheme: the training order of epoch ``e`` is a permutation drawn from ``(seed, stream, e)``
(stream 0 train, 1 meta) and sharded over ranks; every item's crop and augmentation come from a generator
seeded by ``(seed, stream, e, index)`` (:class:`~meta_kd_sr.data.paired.SampleKey`). Items thus do not depend
on the rank, the worker or ``num_workers``; ranks see distinct items; the same seed reproduces every batch;
``W`` ranks with per-device batch ``b`` see the same global batches as one process with batch ``W * b``.
Lightning's fit loop calls ``set_epoch`` on the training samplers at each epoch start. The training
loaders are :class:`~meta_kd_sr.data.samplers.ResumableLoader`: their place within the epoch is saved in
checkpoints, so a run resumed mid-epoch continues with the batches it had not trained on yet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from meta_kd_sr.data.samplers import ResumableLoader, ShardedEvalSampler, TrainSampler

DatasetSource = Dataset | Callable[[], Dataset] | None
SPLITS = ("train", "meta", "val", "test")
_STAGE_SPLITS = {"fit": ("train", "meta", "val"), "validate": ("val",), "test": ("test",), "predict": ()}


class SizedDataset(Protocol):
    """What the loaders need of a dataset: a length and items by index."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: Any) -> Any: ...


class SRDataModule(LightningDataModule):
    """Datasets for SR training with a disjoint meta split, sharded per rank.

    Args:
        train: training dataset, or a zero-argument factory (e.g. a Hydra ``_partial_: true`` target).
        val: validation dataset (full images) or factory.
        meta: meta dataset or factory; its images must be disjoint from the training images.
        test: test dataset or factory.
        batch_size: training batch size, global (split over ranks) or per device.
        batch_size_is_global: whether ``batch_size`` (and ``meta_batch_size``) is the global batch.
        meta_batch_size: batch of the meta loader (``None``: ``batch_size``); a larger meta batch
            lowers the noise of the meta-gradient at the cost of the meta forward/backward.
        val_batch_size: per-device batch size of validation/test (1: full images differ in size).
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory of batches.
        persistent_workers: keep workers alive between epochs (only with ``num_workers > 0``).
        seed: base seed of training order and random crops.
    """

    def __init__(
        self,
        train: DatasetSource,
        val: DatasetSource = None,
        meta: DatasetSource = None,
        test: DatasetSource = None,
        batch_size: int = 16,
        batch_size_is_global: bool = True,
        meta_batch_size: int | None = None,
        val_batch_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        sizes = {
            "batch_size": batch_size,
            "meta_batch_size": meta_batch_size,
            "val_batch_size": val_batch_size,
        }
        for label, value in sizes.items():
            if value is not None and value < 1:
                raise ValueError(f"{label} must be >= 1, got {value}")
        if num_workers < 0 or seed < 0:
            raise ValueError(f"num_workers and seed must be >= 0, got {num_workers=}, {seed=}")
        if train is None:
            raise ValueError("SRDataModule needs a train dataset (or factory)")
        self._sources: dict[str, DatasetSource] = {"train": train, "meta": meta, "val": val, "test": test}
        self._datasets: dict[str, SizedDataset] = {}
        self.batch_size, self.batch_size_is_global = batch_size, batch_size_is_global
        self.meta_batch_size = meta_batch_size
        self.val_batch_size, self.num_workers, self.seed = val_batch_size, num_workers, seed
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers

    # -- distributed context ----------------------------------------------------------------------

    @property
    def world_size(self) -> int:
        """Number of processes: ``trainer.world_size`` when attached to a Trainer, else 1."""
        return int(self.trainer.world_size) if self.trainer is not None else 1

    @property
    def global_rank(self) -> int:
        """This process's rank: ``trainer.global_rank`` when attached to a Trainer, else 0."""
        return int(self.trainer.global_rank) if self.trainer is not None else 0

    @property
    def per_device_batch_size(self) -> int:
        """Training batch per rank: ``batch_size // world_size`` if the batch size is global."""
        return self._per_device("batch_size", self.batch_size)

    @property
    def per_device_meta_batch_size(self) -> int:
        """Meta batch per rank (``meta_batch_size``, else ``batch_size``; split like ``batch_size``)."""
        if self.meta_batch_size is None:
            return self.per_device_batch_size
        return self._per_device("meta_batch_size", self.meta_batch_size)

    def _per_device(self, label: str, size: int) -> int:
        if not self.batch_size_is_global:
            return size
        if size % self.world_size:
            raise ValueError(f"global {label} {size} is not divisible by the world size {self.world_size}")
        return size // self.world_size

    # -- datasets ---------------------------------------------------------------------------------

    def has_split(self, split: str) -> bool:
        """Whether a dataset (or factory) was given for ``split``, without building it."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: choose one of {SPLITS}")
        return self._sources[split] is not None

    def dataset(self, split: str) -> SizedDataset | None:
        """The dataset of ``split`` (train, meta, val, test), built from its factory on first use."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: choose one of {SPLITS}")
        source = self._sources[split]
        if source is None:
            return None
        if split not in self._datasets:
            is_dataset = isinstance(source, Dataset) or hasattr(source, "__getitem__")
            if not is_dataset and not callable(source):
                raise ValueError(
                    f"{split} must be a Dataset or a zero-argument factory, got {type(source).__name__}"
                )
            built = source if is_dataset else cast(Callable[[], Any], source)()
            self._datasets[split] = cast(SizedDataset, built)
        return self._datasets[split]

    def prepare_data(self) -> None:
        """Generate missing files (LR PNGs, decoded caches) once; Lightning calls this on rank 0 only."""
        for split in SPLITS:
            dataset = self.dataset(split)
            prepare = getattr(dataset, "prepare", None)
            if callable(prepare):
                prepare()

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of ``stage`` (all when ``None``), check the meta split, preload RAM caches."""
        splits = SPLITS if stage is None else _STAGE_SPLITS.get(stage, SPLITS)
        built = {s: self.dataset(s) for s in splits}
        if built.get("train") is not None and built.get("meta") is not None:
            check_disjoint(cast(Dataset, built["train"]), cast(Dataset, built["meta"]))
        for split, dataset in built.items():
            preload = getattr(dataset, "preload", None)
            if dataset is not None and callable(preload):
                shard = (
                    None if split in ("train", "meta") else ShardedEvalSampler(len(dataset), *self._shard())
                )
                preload(None if shard is None else list(shard))

    def _shard(self) -> tuple[int, int]:
        return self.world_size, self.global_rank

    # -- loaders ----------------------------------------------------------------------------------

    def train_dataloader(self) -> dict[str, DataLoader]:
        """``{"train": loader}`` plus ``"meta"`` when a meta dataset is given (Lightning combines them)."""
        loaders = {"train": self._train_loader("train", stream=0)}
        if self._sources["meta"] is not None:
            loaders["meta"] = self._train_loader("meta", stream=1)
        return loaders

    def val_dataloader(self) -> DataLoader | list:
        """Full-image validation loader (unpadded shard of this rank); ``[]`` without a val dataset."""
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        """Full-image test loader (unpadded shard of this rank); ``[]`` without a test dataset."""
        return self._eval_loader("test")

    def _train_loader(self, split: str, stream: int) -> DataLoader:
        dataset = self.dataset(split)
        if dataset is None:
            raise ValueError(f"no {split} dataset: set data.{split}")
        batch = self.per_device_meta_batch_size if split == "meta" else self.per_device_batch_size
        sampler = TrainSampler(len(dataset), *self._shard(), seed=self.seed, stream=stream)
        if len(sampler) < batch:
            raise ValueError(
                f"{split} has {len(dataset)} samples: fewer than one batch of {batch} per rank on "
                f"{self.world_size} rank(s); raise samples_per_epoch"
            )
        return ResumableLoader(
            dataset, batch_size=batch, sampler=sampler, drop_last=True, **self._loader_kwargs()
        )

    def _eval_loader(self, split: str) -> DataLoader | list:
        dataset = self.dataset(split)
        if dataset is None:
            return []
        sampler = ShardedEvalSampler(len(dataset), *self._shard())
        loader_set = cast(Dataset, dataset)
        return DataLoader(
            loader_set, batch_size=self.val_batch_size, sampler=sampler, **self._loader_kwargs()
        )

    def _loader_kwargs(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.persistent_workers and self.num_workers > 0,
        }


def check_disjoint(train: Dataset, meta: Dataset) -> None:
    """Raise ``ValueError`` listing the images shared by the train and meta datasets (via ``image_names``).

    An image in both counts as shared unless both datasets use only some of its rows (``image_rows``:
    ``{name: (start, stop)}``, e.g. ``EmbeddedPhotos(rows=...)``) and those row ranges do not intersect.
    """
    train_names, meta_names = getattr(train, "image_names", None), getattr(meta, "image_names", None)
    if train_names is None or meta_names is None:
        return
    rows_t, rows_m = getattr(train, "image_rows", None) or {}, getattr(meta, "image_rows", None) or {}

    def intersect(name: str) -> bool:
        a, b = rows_t.get(name), rows_m.get(name)
        return a is None or b is None or (a[0] < b[1] and b[0] < a[1])

    overlap = sorted(n for n in set(train_names) & set(meta_names) if intersect(n))
    if overlap:
        shown = ", ".join(overlap[:20]) + (f", ... ({len(overlap)} in all)" if len(overlap) > 20 else "")
        raise ValueError(f"meta images must be disjoint from the training images; both contain: {shown}")
