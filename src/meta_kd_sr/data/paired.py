"""Base dataset of paired (LR, HR) images with a decoded-image cache, shared by DIV2K and image folders.

Randomness: a training item is a pure function of its :class:`SampleKey` ``(index, epoch, seed, stream)``.
The crop position and the three augmentation coins come from a ``torch.Generator`` seeded by hashing the
key, so an item does not depend on the rank, the DataLoader worker or the number of workers that loads it.
Ranks draw distinct patches because their samplers hand them distinct indices, and re-running with the same
seed reproduces every batch. A plain integer index means ``SampleKey(index)`` (epoch 0, seed 0).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from meta_kd_sr.data.io import read_image, read_image_size, save_npy, save_png, to_float
from meta_kd_sr.data.sizes import ImageSize, check_image_sizes
from meta_kd_sr.data.transforms import (
    augment_pair,
    bicubic_downscale,
    check_pair_sizes,
    check_patch_fits,
    check_scale,
    crop_to_multiple,
    random_crop_coords,
    random_crop_pair,
)

CACHE_MODES = ("npy", "memory", "none")
# Each memory map holds a file descriptor: keep the most recently used ones open (2 per image), per process.
MAX_OPEN_MAPS = 128


class SampleKey(NamedTuple):
    """What a training sampler yields: an item index plus the context its randomness is derived from."""

    index: int
    epoch: int = 0
    seed: int = 0
    stream: int = 0


def seeded_generator(*words: int) -> torch.Generator:
    """A ``torch.Generator`` seeded by hashing non-negative integers (numpy ``SeedSequence``)."""
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(2)
    generator = torch.Generator()
    generator.manual_seed((int(state[0]) << 32 | int(state[1])) & (2**63 - 1))
    return generator


def sample_generator(key: SampleKey) -> torch.Generator:
    """The generator of one training item: a hash of ``(seed, stream, epoch, index)``."""
    return seeded_generator(key.seed, key.stream, key.epoch, key.index)


@dataclass(frozen=True)
class ImageRecord:
    """Where one image pair comes from.

    Attributes:
        name: image name reported in items (e.g. ``"0001"``).
        hr_path: HR file; ``None`` when the dataset supplies HR pixels itself (embedded photos).
        lr_paths: LR PNGs that may exist on disk; the first existing one is used.
        lr_target: where ``prepare()`` writes a generated LR PNG when none of ``lr_paths`` exists;
            ``None`` means the LR is generated in memory when read.
    """

    name: str
    hr_path: Path | None
    lr_paths: tuple[Path, ...] = ()
    lr_target: Path | None = None

    def existing_lr(self) -> Path | None:
        """The first LR file that exists (``lr_paths``, then ``lr_target``), or ``None``."""
        candidates = self.lr_paths + ((self.lr_target,) if self.lr_target is not None else ())
        return next((p for p in candidates if p.is_file()), None)


class PairedImageDataset(Dataset):
    """Paired images with an optional decoded cache; items ``{"lq", "gt", "name"}``.

    Items: ``lq`` (3, h, w) float32 and ``gt`` (3, h * scale, w * scale) float32 in [0, 1] (uint8 levels),
    ``name`` the image name. Train mode: item ``i`` uses image ``i % n_images``, an aligned random crop and
    (if ``augment``) random h-flip / v-flip / transpose; the length is ``samples_per_epoch`` or
    ``n_images``. Eval mode: full images, HR cropped to a multiple of the scale, no augmentation.

    Cache modes: ``"npy"`` stores decoded uint8 arrays (H, W, 3) under ``cache_dir`` once (``prepare()``)
    and memory-maps them, so a crop reads only its rows and workers/ranks share the page cache;
    ``"memory"`` keeps decoded tensors in RAM (per process, filled on first use or by ``preload()``);
    ``"none"`` decodes the files for every item. ``prepare()`` does all file writing (atomically);
    ``__getitem__`` never writes. Cached files are keyed by source paths, not contents: delete
    ``cache_dir`` after changing images in place.

    Every image's size is checked when the dataset is built, from the file headers (nothing is decoded):
    one ``ValueError`` lists the images smaller than the training patch or than MATLAB bicubic needs, and
    the LR files whose size is not the HR size divided by the scale (:mod:`meta_kd_sr.data.sizes`).
    """

    def __init__(
        self,
        records: list[ImageRecord],
        scale: int,
        *,
        train: bool,
        patch_size: int | None,
        augment: bool,
        samples_per_epoch: int | None,
        cache: str,
        cache_dir: str | Path | None,
    ) -> None:
        self.scale = check_scale(scale)
        if cache not in CACHE_MODES:
            raise ValueError(f"unknown cache mode {cache!r}: choose one of {CACHE_MODES}")
        if cache == "npy" and cache_dir is None:
            raise ValueError("cache='npy' needs a cache_dir for the decoded arrays")
        if train and (patch_size is None or patch_size < scale or patch_size % scale):
            raise ValueError(
                f"patch_size (HR) must be a positive multiple of scale {scale}, got {patch_size}"
            )
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1 or None, got {samples_per_epoch}")
        if not records:
            raise ValueError("a paired dataset needs at least one image")
        self.records = list(records)
        self.train, self.augment, self.cache = bool(train), bool(augment), cache
        self.patch_size = patch_size
        self.samples_per_epoch = samples_per_epoch
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._memory: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._mmaps: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        lq_patch = patch_size // self.scale if self.train and patch_size is not None else None
        check_image_sizes([self._image_size(i) for i in range(len(self.records))], self.scale, lq_patch)

    @property
    def image_names(self) -> tuple[str, ...]:
        """Names of the images, in index order."""
        return tuple(r.name for r in self.records)

    def __len__(self) -> int:
        if self.train and self.samples_per_epoch is not None:
            return self.samples_per_epoch
        return len(self.records)

    def __getitem__(self, key: int | SampleKey | tuple) -> dict[str, torch.Tensor | str]:
        key = SampleKey(*key) if isinstance(key, tuple) else SampleKey(int(key))
        if not 0 <= key.index < len(self):
            raise IndexError(f"index {key.index} out of range for a dataset of length {len(self)}")
        img = key.index % len(self.records)
        if self.train:
            generator = sample_generator(key)
            lq, gt = self._train_patch(img, generator)
            if self.augment:
                lq, gt = augment_pair(lq, gt, generator=generator)
        else:
            lq, gt = self._full_pair(img)
        return {"lq": to_float(lq), "gt": to_float(gt), "name": self.records[img].name}

    def prepare(self) -> list[Path]:
        """Write every missing file (generated LR PNGs, ``.npy`` cache) once; return the files written.

        Call once, on one process, before reading (``SRDataModule.prepare_data`` does). Writes are atomic
        (temporary file + ``os.replace``), so concurrent readers never see partial files.
        """
        written: list[Path] = []
        for img, record in enumerate(self.records):
            gt = None
            if record.lr_target is not None and record.existing_lr() is None:
                gt = self._read_gt(img)
                written.append(save_png(bicubic_downscale(gt, self.scale), record.lr_target))
            if self.cache == "npy":
                paths = self._npy_paths(img)
                if not all(p.is_file() for p in paths):
                    lq, gt = self._decode_pair(img, gt)
                    for tensor, path in zip((lq, gt), paths):
                        written.append(save_npy(tensor.permute(1, 2, 0).numpy(), path))
        return written

    def preload(self, images: Iterable[int] | None = None) -> PairedImageDataset:
        """Decode images into RAM now (``cache="memory"`` only; a no-op otherwise).

        Done in the main process before DataLoader workers start, the decoded images are shared with the
        workers (fork) instead of being decoded again in each of them.

        Args:
            images: image indices to load (default: all).
        """
        if self.cache == "memory":
            for img in range(len(self.records)) if images is None else images:
                self._full_pair(img)
        return self

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_mmaps"] = OrderedDict()  # memory maps are reopened in each process, never pickled as copies
        return state

    # -- loading -------------------------------------------------------------------------------------

    def _image_size(self, img: int) -> ImageSize:
        """Stored sizes of image ``img`` from the file headers (subclasses without files override this)."""
        record = self.records[img]
        lr_file = record.existing_lr()
        lr = read_image_size(lr_file) if lr_file is not None else None
        return ImageSize(str(record.hr_path), read_image_size(_hr_file(record)), lr_file, lr)

    def _read_hr(self, img: int) -> torch.Tensor:
        """HR pixels of image ``img``: (3, H, W) uint8 (subclasses without files override this)."""
        return read_image(_hr_file(self.records[img]))

    def _read_gt(self, img: int) -> torch.Tensor:
        return crop_to_multiple(self._read_hr(img), self.scale).contiguous()

    def _decode_pair(self, img: int, gt: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        record = self.records[img]
        gt = self._read_gt(img) if gt is None else gt
        lr_file = record.existing_lr()
        if lr_file is not None:
            lq = read_image(lr_file)
            check_pair_sizes(lq, gt, self.scale, name=str(lr_file))
        elif record.lr_target is not None:
            raise FileNotFoundError(
                f"LR image of '{record.name}' not found (looked for {[str(p) for p in record.lr_paths]} "
                f"and {record.lr_target}): call prepare() once to generate it"
            )
        else:
            lq = bicubic_downscale(gt, self.scale)
        return lq, gt

    def _full_pair(self, img: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache == "npy":
            lq, gt = self._mmap_pair(img)
            return _to_chw(lq), _to_chw(gt)
        if self.cache == "memory":
            if img not in self._memory:
                self._memory[img] = self._decode_pair(img)
            return self._memory[img]
        return self._decode_pair(img)

    def _train_patch(self, img: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.patch_size is None:
            raise ValueError("training patches need patch_size")
        p, s, name = self.patch_size // self.scale, self.scale, self.records[img].name
        if self.cache != "npy":
            lq, gt = self._full_pair(img)
            return random_crop_pair(lq, gt, p, s, generator, name=name)
        lq, gt = self._mmap_pair(img)
        check_patch_fits(lq.shape[0], lq.shape[1], p, s, name)
        top, left = random_crop_coords(lq.shape[0], lq.shape[1], p, generator)
        lq_patch = lq[top : top + p, left : left + p]
        gt_patch = gt[top * s : (top + p) * s, left * s : (left + p) * s]
        return _to_chw(lq_patch), _to_chw(gt_patch)

    # -- npy cache -----------------------------------------------------------------------------------

    def _npy_paths(self, img: int) -> tuple[Path, Path]:
        record = self.records[img]
        source = f"{record.hr_path}|{record.lr_paths}|{record.lr_target}|x{self.scale}"
        digest = hashlib.sha1(source.encode()).hexdigest()[:10]
        if self.cache_dir is None:
            raise ValueError("cache='npy' needs cache_dir")
        folder = self.cache_dir / "npy"
        return folder / f"{record.name}-{digest}-lq.npy", folder / f"{record.name}-{digest}-gt.npy"

    def _mmap_pair(self, img: int) -> tuple[np.ndarray, np.ndarray]:
        if img in self._mmaps:
            self._mmaps.move_to_end(img)
        else:
            arrays = []
            for path in self._npy_paths(img):
                if not path.is_file():
                    raise FileNotFoundError(
                        f"decoded cache file {path} is missing: call prepare() once before reading with "
                        "cache='npy' (SRDataModule.prepare_data does)"
                    )
                arrays.append(np.load(path, mmap_mode="r"))
            lq, gt = arrays
            if gt.shape != (lq.shape[0] * self.scale, lq.shape[1] * self.scale, 3):
                raise ValueError(
                    f"stale decoded cache for '{self.records[img].name}' in {path.parent}: delete it"
                )
            self._mmaps[img] = (lq, gt)
            if len(self._mmaps) > MAX_OPEN_MAPS:
                self._mmaps.popitem(last=False)
        return self._mmaps[img]


def _to_chw(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 array (possibly a read-only memory map) -> (3, H, W) uint8 tensor (a copy)."""
    return torch.from_numpy(np.array(array.transpose(2, 0, 1), order="C"))


def _hr_file(record: ImageRecord) -> Path:
    """The HR file of ``record``; a record without one belongs to a dataset that overrides the readers."""
    if record.hr_path is None:
        raise ValueError(f"image {record.name!r} has no HR file: its dataset must supply the HR pixels")
    return record.hr_path
