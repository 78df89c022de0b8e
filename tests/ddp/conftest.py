"""Fixtures of the DDP tests: tiny image folders of real photo crops and a tiny teacher checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers.ddp_helpers import TEACHER
from meta_kd_sr.models import EDSR

# (photo, top, left, height, width): real photo crops; HR sides are multiples of the scale (4).
CROPS = {
    "train": [("astronaut", 40, 180, 64, 64), ("rocket", 150, 260, 64, 64), ("coffee", 100, 200, 64, 64)],
    "meta": [("astronaut", 250, 300, 64, 64), ("rocket", 40, 100, 64, 64)],
    # an odd number of differently sized images: two ranks get uneven shards
    "val": [("chelsea", 60, 150, 48, 64), ("coffee", 200, 300, 64, 40), ("astronaut", 100, 100, 56, 56)],
}


def write_assets(root: Path, photos: dict) -> Path:
    """Image folders train/ meta/ val/ of real photo crops and a tiny EDSR teacher checkpoint in ``root``."""
    for split, crops in CROPS.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for i, (name, top, left, h, w) in enumerate(crops):
            crop = photos[name][top : top + h, left : left + w]
            Image.fromarray(crop.copy()).save(root / split / f"{split}{i}.png")
    torch.manual_seed(1)
    torch.save(EDSR(scale=4, **TEACHER).state_dict(), root / "teacher.pt")
    return root


@pytest.fixture(scope="session")
def ddp_assets(tmp_path_factory, photos_uint8) -> Path:
    """Folders and teacher of ``write_assets`` in a session temp dir."""
    return write_assets(tmp_path_factory.mktemp("ddp_assets"), photos_uint8)
