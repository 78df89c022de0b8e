"""Small on-disk datasets made of crops of scikit-image's real photos, written with PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# (photo, top, left, height, width): the last size is not a multiple of 4 (HR gets cropped).
DIV2K_CROPS = (
    ("astronaut", 40, 180, 64, 80),
    ("chelsea", 60, 150, 72, 64),
    ("coffee", 100, 200, 64, 88),
    ("rocket", 150, 260, 80, 72),
    ("astronaut", 250, 300, 66, 83),
)


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def hr_crops(photos: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [photos[n][t : t + h, left : left + w].copy() for n, t, left, h, w in DIV2K_CROPS]


@pytest.fixture(scope="session")
def png_writer():
    """``write_png(path, array)``: a PNG written with PIL (parents created)."""
    return write_png


@pytest.fixture
def div2k_root(tmp_path: Path, photos_uint8) -> Path:
    """``root/DIV2K_train_HR/0001.png .. 0005.png`` (no LR folder): real photo crops."""
    root = tmp_path / "div2k"
    for i, array in enumerate(hr_crops(photos_uint8), start=1):
        write_png(root / "DIV2K_train_HR" / f"{i:04d}.png", array)
    return root


@pytest.fixture
def hr_folder(tmp_path: Path, photos_uint8) -> Path:
    """``set/HR/`` with three photos in unsorted creation order (b, c, a) and one size not a multiple of 3."""
    folder = tmp_path / "set" / "HR"
    crops = hr_crops(photos_uint8)
    for stem, array in (("b", crops[1]), ("c", crops[4]), ("a", crops[0])):
        write_png(folder / f"{stem}.png", array)
    return folder
