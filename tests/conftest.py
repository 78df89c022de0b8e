"""Shared fixtures: real photos from scikit-image's wheel, no network, no downloads."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
# Tiny tensors on 2 busy cores: one intra-op thread avoids OpenMP barrier stalls.
torch.set_num_threads(1)


def _photo(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)()


@pytest.fixture(scope="session")
def photos_uint8() -> dict[str, np.ndarray]:
    """A few real RGB photos (H, W, 3) uint8 shipped with scikit-image."""
    return {n: _photo(n) for n in ("astronaut", "chelsea", "coffee", "rocket")}


@pytest.fixture(scope="session")
def photo_batch(photos_uint8) -> torch.Tensor:
    """(4, 3, 96, 96) float32 in [0, 1]: centre crops of the real photos."""
    crops = []
    for im in photos_uint8.values():
        h, w = im.shape[:2]
        top, left = (h - 96) // 2, (w - 96) // 2
        crops.append(torch.from_numpy(im[top : top + 96, left : left + 96].copy()).permute(2, 0, 1))
    return torch.stack(crops).float() / 255.0
