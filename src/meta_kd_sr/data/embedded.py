"""Real RGB photos shipped inside scikit-image's wheel: an offline SR dataset for tests and the CPU demo."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
import torch

from meta_kd_sr.data.paired import ImageRecord, PairedImageDataset
from meta_kd_sr.data.sizes import ImageSize

# RGB photos whose files are part of the scikit-image wheel (loaded without network).
_LOADERS = {
    "astronaut": ("astronaut", None),
    "chelsea": ("chelsea", None),
    "coffee": ("coffee", None),
    "rocket": ("rocket", None),
    "hubble_deep_field": ("hubble_deep_field", None),
    "immunohistochemistry": ("immunohistochemistry", None),
    "retina": ("retina", None),
    "colorwheel": ("colorwheel", None),
    "motorcycle_left": ("stereo_motorcycle", 0),
    "motorcycle_right": ("stereo_motorcycle", 1),
}
EMBEDDED_PHOTOS = tuple(_LOADERS)
# `skimage.data.cat()` is the very same photo as `chelsea()`: resolving the alias keeps splits disjoint.
PHOTO_ALIASES = {"cat": "chelsea"}
_PAIRS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def load_photo(name: str) -> torch.Tensor:
    """One embedded photo as a (3, H, W) uint8 tensor (``name`` from ``EMBEDDED_PHOTOS`` or an alias)."""
    import skimage.data

    function, item = _LOADERS[_canonical(name)]
    array = getattr(skimage.data, function)()
    array = array[item] if item is not None else array
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"embedded photo {name} is not 8-bit RGB: {array.dtype} {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()


@cache
def photo_height(name: str) -> int:
    """The height in pixels of embedded photo ``name`` (decoded once per process)."""
    return int(load_photo(name).shape[1])


def row_span(height: int, rows: Sequence[float], scale: int) -> tuple[int, int]:
    """HR rows ``[start, stop)`` of the fractions ``rows`` of a photo ``height`` high, multiples of ``scale``.

    Both ends are rounded down to a multiple of ``scale`` by the same rule, so splits that share a fraction
    (``[0, f]`` and ``[f, 1]``) share the boundary row and never overlap; the LR of a region is made from the
    region's own pixels.
    """
    start, stop = rows
    return int(start * height) // scale * scale, int(stop * height) // scale * scale


def _check_rows(rows: Sequence[float] | None) -> tuple[float, float] | None:
    if rows is None:
        return None
    if isinstance(rows, str) or len(rows) != 2 or not 0 <= float(rows[0]) < float(rows[1]) <= 1:
        raise ValueError(
            f"rows must be [start, stop] fractions of the photo height, 0 <= start < stop <= 1, got {rows!r}"
        )
    return float(rows[0]), float(rows[1])


def _canonical(name: str) -> str:
    name = PHOTO_ALIASES.get(name, name)
    if name not in _LOADERS:
        raise ValueError(
            f"unknown embedded photo {name!r}: valid names are {', '.join(EMBEDDED_PHOTOS)} "
            f"(aliases: {PHOTO_ALIASES})"
        )
    return name


class EmbeddedPhotos(PairedImageDataset):
    """scikit-image's natural photos as an SR dataset; LR made with MATLAB bicubic on uint8 images.

    Images are decoded and their LR generated in memory when the dataset is built (once per process; nothing
    is written to disk), which also checks their sizes against the patch in train mode.
    Items and train/eval behaviour as in :class:`PairedImageDataset`; names are the canonical photo names
    (``"cat"`` becomes ``"chelsea"``, the same photo).

    Args:
        names: photo names from ``EMBEDDED_PHOTOS``.
        scale: 2, 3 or 4.
        train: random patches (True) or full images, cropped to a multiple of the scale (False).
        patch_size: HR patch side, required in train mode.
        augment: random h-flip, v-flip, transpose in train mode.
        samples_per_epoch: train-mode length (default: the number of photos).
        rows: ``[start, stop]``, fractions of the height: only these rows of a photo are used (``row_span``),
            so a train and a meta split can share a photo and stay disjoint in pixels; None: whole photos.
        carved: the photos that ``rows`` applies to (None: every photo); the others are used whole.
    """

    def __init__(
        self,
        names: Sequence[str],
        scale: int,
        train: bool,
        patch_size: int | None = None,
        augment: bool = True,
        samples_per_epoch: int | None = None,
        rows: Sequence[float] | None = None,
        carved: Sequence[str] | None = None,
    ) -> None:
        if isinstance(names, str) or len(names) == 0:
            raise ValueError(f"names must be a non-empty list of photo names, got {names!r}")
        canonical = [_canonical(str(n)) for n in names]
        duplicates = sorted({n for n in canonical if canonical.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate embedded photos (after resolving aliases): {duplicates}")
        self.rows = _check_rows(rows)
        self.carved = set(canonical if carved is None else (_canonical(str(n)) for n in carved))
        if self.rows is None and carved is not None:
            raise ValueError(f"carved={list(carved)!r} names photos to cut, but rows is None")
        super().__init__(
            [ImageRecord(n, None) for n in canonical],
            scale,
            train=train,
            patch_size=patch_size,
            augment=augment,
            samples_per_epoch=samples_per_epoch,
            cache="memory",
            cache_dir=None,
        )

    @property
    def image_rows(self) -> dict[str, tuple[int, int]]:
        """HR rows ``[start, stop)`` used of each carved photo, by name (``{}`` without ``rows``)."""
        if self.rows is None:
            return {}
        return {
            r.name: row_span(photo_height(r.name), self.rows, self.scale)
            for r in self.records
            if r.name in self.carved
        }

    def _image_size(self, img: int) -> ImageSize:
        # No file header to read: decode now, into the per-process cache the items are read from.
        _, gt = self._decode_pair(img)
        return ImageSize(f"embedded photo {self.records[img].name}", (gt.shape[1], gt.shape[2]))

    def _read_hr(self, img: int) -> torch.Tensor:
        name = self.records[img].name
        photo = load_photo(name)
        if self.rows is None or name not in self.carved:
            return photo
        start, stop = row_span(photo.shape[1], self.rows, self.scale)
        return photo[:, start:stop].contiguous()

    def _decode_pair(self, img: int, gt: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # The photos never change: make each (photo, scale) LR once per process, not once per dataset.
        name = self.records[img].name
        key = (name, self.scale, self.rows if name in self.carved else None)
        if key not in _PAIRS:
            _PAIRS[key] = super()._decode_pair(img, gt)
        return _PAIRS[key]
