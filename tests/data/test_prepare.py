from __future__ import annotations

import pytest
import torch

from meta_kd_sr.data.io import read_image
from meta_kd_sr.data.prepare import generate_lr_folder
from meta_kd_sr.data.transforms import bicubic_downscale, crop_to_multiple


def test_generates_matlab_bicubic_lr_for_every_hr(hr_folder, tmp_path):
    lr_dir = tmp_path / "LR" / "X3"
    paths = generate_lr_folder(hr_folder, lr_dir, 3)
    assert [p.name for p in paths] == ["ax3.png", "bx3.png", "cx3.png"]
    for stem, path in zip("abc", paths):
        gt = crop_to_multiple(read_image(hr_folder / f"{stem}.png"), 3).contiguous()
        assert torch.equal(read_image(path), bicubic_downscale(gt, 3))


def test_existing_files_are_kept(hr_folder, tmp_path):
    first = generate_lr_folder(hr_folder, tmp_path / "lr", 2, name_format="{stem}.png")
    mtimes = [p.stat().st_mtime_ns for p in first]
    first[0].unlink()
    again = generate_lr_folder(hr_folder, tmp_path / "lr", 2, name_format="{stem}.png")
    assert again == first
    assert [p.stat().st_mtime_ns for p in again[1:]] == mtimes[1:]  # only the deleted file was rewritten


def test_bad_arguments(hr_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"HR folder not found: .*missing"):
        generate_lr_folder(tmp_path / "missing", tmp_path / "lr", 4)
    with pytest.raises(ValueError, match="lr_dir must differ from the HR folder"):
        generate_lr_folder(hr_folder, hr_folder, 4)
    with pytest.raises(ValueError, match="unsupported scale 6"):
        generate_lr_folder(hr_folder, tmp_path / "lr", 6)
    with pytest.raises(ValueError, match="name_format must produce .png files"):
        generate_lr_folder(hr_folder, tmp_path / "lr", 4, name_format="{stem}.jpg")
