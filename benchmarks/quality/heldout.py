"""The benchmark's held-out photos and their evaluation with the library's SR protocol.

The held-out set is the ``data=embedded`` validation split (``chelsea``, ``coffee``: RGB) plus grayscale
natural photos of scikit-image's wheel that no split of ``conf/data`` uses (``camera``, ``coins``, ``moon``,
``brick``, ``grass``, ``gravel``; gray replicated to RGB, so Y is the photo). :func:`check_disjoint` refuses a
held-out set that shares a photo with the training or meta split of the runs' config. Scores come from
``meta_kd_sr.cli.evaluate.score_dataset`` (Y of MATLAB rgb2ycbcr, ``scale`` pixels cropped, SR quantised to
uint8, per-image PSNR/SSIM averaged over images), with LR made by MATLAB-compatible bicubic on uint8.

The sweep of loss weights (``--sweep``) chooses on other photos, never on these: ``SWEEP_VAL``, the rest of
the wheel's 8-bit gray photos (``clock``, ``text``, ``page``, ``cell``, ``microaneurysms``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from meta_kd_sr.cli.evaluate import SRFunction, score_dataset
from meta_kd_sr.data.embedded import EMBEDDED_PHOTOS, PHOTO_ALIASES, load_photo
from meta_kd_sr.data.paired import ImageRecord, PairedImageDataset
from meta_kd_sr.data.sizes import ImageSize

EMBEDDED_VAL = ("chelsea", "coffee")
GRAY_PHOTOS = ("camera", "coins", "moon", "brick", "grass", "gravel")
HELDOUT = EMBEDDED_VAL + GRAY_PHOTOS
SWEEP_VAL = ("clock", "text", "page", "cell", "microaneurysms")
PHOTO_SETS = {"heldout": HELDOUT, "sweep_val": SWEEP_VAL}


def load_heldout_photo(name: str) -> torch.Tensor:
    """A held-out photo as (3, H, W) uint8: an embedded RGB photo, or a gray one replicated to RGB."""
    if name in GRAY_PHOTOS or name in SWEEP_VAL:
        import skimage.data

        array = getattr(skimage.data, name)()
        if array.dtype != np.uint8 or array.ndim != 2:
            raise ValueError(f"scikit-image photo {name} is not 8-bit gray: {array.dtype} {array.shape}")
        return torch.from_numpy(np.ascontiguousarray(array))[None].expand(3, -1, -1).contiguous()
    if PHOTO_ALIASES.get(name, name) in EMBEDDED_PHOTOS:
        return load_photo(name)
    raise ValueError(
        f"unknown held-out photo {name!r}: choose from {EMBEDDED_PHOTOS + GRAY_PHOTOS + SWEEP_VAL}"
    )


class HeldoutPhotos(PairedImageDataset):
    """Full held-out images ``{"lq", "gt", "name"}``: HR cropped to a multiple of ``scale``, LR by bicubic.

    Args:
        names: photos from ``EMBEDDED_PHOTOS`` or ``GRAY_PHOTOS``.
        scale: 2, 3 or 4.
    """

    def __init__(self, names: Sequence[str], scale: int) -> None:
        if isinstance(names, str) or not names or len(set(names)) != len(names):
            raise ValueError(f"names must be a non-empty list of distinct photo names, got {names!r}")
        records = [ImageRecord(str(n), None) for n in names]
        super().__init__(
            records,
            scale,
            train=False,
            patch_size=None,
            augment=False,
            samples_per_epoch=None,
            cache="memory",
            cache_dir=None,
        )

    def _image_size(self, img: int) -> ImageSize:
        shape = self._read_hr(img).shape
        return ImageSize(f"held-out photo {self.records[img].name}", (shape[1], shape[2]))

    def _read_hr(self, img: int) -> torch.Tensor:
        return load_heldout_photo(self.records[img].name)


def check_disjoint(heldout: Iterable[str], trained: Iterable[str]) -> None:
    """Raise ``ValueError`` when a held-out photo is also a training or meta photo (aliases resolved)."""
    canonical = {PHOTO_ALIASES.get(n, n) for n in trained}
    shared = sorted({PHOTO_ALIASES.get(n, n) for n in heldout} & canonical)
    if shared:
        raise ValueError(f"held-out photos {shared} are also in the training/meta split {sorted(canonical)}")


def score(sr_fn: SRFunction, dataset: HeldoutPhotos) -> dict[str, Any]:
    """``score_dataset`` (the protocol) on the embedded-val photos and on the rest; ``all``: every image.

    ``all`` is the image-count weighted mean of the two parts, i.e. the per-image mean over the whole set.
    """
    parts: dict[str, list[dict[str, Any]]] = {"embedded_val": [], "other": []}
    for i, name in enumerate(dataset.image_names):
        parts["embedded_val" if name in EMBEDDED_VAL else "other"].append(dataset[i])
    result = {k: score_dataset(sr_fn, items, dataset.scale) for k, items in parts.items() if items}
    n = sum(r["n_images"] for r in result.values())
    result["all"] = {
        "psnr_y": sum(r["psnr_y"] * r["n_images"] for r in result.values()) / n,
        "ssim_y": sum(r["ssim_y"] * r["n_images"] for r in result.values()) / n,
        "n_images": n,
    }
    return result
