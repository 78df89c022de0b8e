from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf

import meta_kd_sr.data.prepare as prepare_mod
from meta_kd_sr.cli.prepare import prepare
from meta_kd_sr.data.datasets import DIV2K, ImageFolderSR
from meta_kd_sr.data.io import read_image, save_png, to_float
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


def _prepare(hr_dir, scales=(4,), **extra):
    return prepare(
        OmegaConf.create({"hr_dir": str(hr_dir), "out_dir": None, "scales": list(scales), **extra})
    )


def _mark(path):
    """Overwrite a prepared LR file with an image of the same size that bicubic never makes (inverted)."""
    marked = 255 - read_image(path)
    save_png(marked, path)
    return marked


def test_default_output_is_what_the_div2k_loader_reads(div2k_root):
    valid = div2k_root / "DIV2K_valid_HR"
    valid.mkdir()
    for i in (4, 5):
        os.replace(div2k_root / f"DIV2K_train_HR/{i:04d}.png", valid / f"{796 + i:04d}.png")
    train_out = _prepare(div2k_root / "DIV2K_train_HR", scales=(2, 4))
    valid_out = _prepare(valid)
    assert train_out == {s: div2k_root / f"DIV2K_train_LR_bicubic/X{s}" for s in (2, 4)}
    assert valid_out == {4: div2k_root / "DIV2K_valid_LR_bicubic/X4"}
    marked = _mark(train_out[4] / "0002x4.png"), _mark(valid_out[4] / "0801x4.png")
    train = DIV2K(div2k_root, 4, index_range=(1, 3), train=False, cache="none")
    val = DIV2K(div2k_root, 4, index_range=(800, 801), train=False, cache="none")
    assert train.prepare() == [] and val.prepare() == []  # nothing left to generate
    assert torch.equal(train[1]["lq"], to_float(marked[0]))  # the loaders read the prepared files
    assert torch.equal(val[1]["lq"], to_float(marked[1]))
    x2 = DIV2K(div2k_root, 2, index_range=(1, 3), train=False, cache="none")
    assert x2.prepare() == [] and torch.equal(x2[0]["lq"], to_float(read_image(train_out[2] / "0001x2.png")))


def test_lr_folder_follows_the_hr_folder(div2k_root, tmp_path):
    assert DIV2K(div2k_root, 4, index_range=(1, 1), train=False).records[0].lr_paths[0] == (
        div2k_root / "DIV2K_train_LR_bicubic/X4/0001x4.png"
    )
    os.replace(div2k_root / "DIV2K_train_HR", div2k_root / "mine")
    with pytest.raises(ValueError, match="DIV2K hr_subdir 'mine' has no official LR folder: give lr_subdir"):
        DIV2K(div2k_root, 4, index_range=(1, 5), train=False, hr_subdir="mine")
    ds = DIV2K(div2k_root, 4, index_range=(1, 5), train=False, hr_subdir="mine", lr_subdir="mine_LR")
    assert ds.records[0].lr_paths[0] == div2k_root / "mine_LR" / "X4" / "0001x4.png"


@pytest.mark.parametrize("hr_name", ["HR", "GTmod12"])
def test_default_output_is_what_evaluation_reads(hr_folder, hr_name):
    hr_dir = hr_folder.rename(hr_folder.parent / hr_name)
    out = _prepare(hr_dir, scales=(2, 4))
    assert out == {s: hr_dir.parent / "LR_bicubic" / f"X{s}" for s in (2, 4)}
    marked = _mark(out[4] / "bx4.png")
    ds = ImageFolderSR(hr_dir, 4, lr_dir=None, train=False)  # what meta-kd-sr-eval builds
    assert ds.lr_dir == out[4]
    assert torch.equal(ds[1]["lq"], to_float(marked))


def test_folder_of_no_known_layout_needs_an_output_folder(hr_folder, tmp_path):
    plain = hr_folder.rename(tmp_path / "photos")
    with pytest.raises(ValueError, match=r"no default LR folder for .*photos: the datasets read LR images"):
        _prepare(plain)
    assert _prepare(plain, out_dir=str(tmp_path / "LR_bicubic")) == {4: tmp_path / "LR_bicubic" / "X4"}
    # The parent of a folder that is not a set's HR folder may hold other sets: nothing there is paired.
    assert ImageFolderSR(plain, 4).lr_dir is None


class Interrupted(Exception):
    """Stands for the kill that stops a run."""


def test_interrupted_run_is_finished_without_redoing_finished_files(div2k_root, monkeypatch):
    hr_dir, lr_dir = div2k_root / "DIV2K_train_HR", div2k_root / "DIV2K_train_LR_bicubic" / "X4"
    good = generate_lr_folder(hr_dir, div2k_root / "reference", 4)
    writes = []

    def save_then_crash(image, path):
        if len(writes) == 2:
            raise Interrupted  # the run is stopped while making the third file
        writes.append(path.name)
        return save_png(image, path)

    monkeypatch.setattr(prepare_mod, "save_png", save_then_crash)
    with pytest.raises(Interrupted):
        _prepare(hr_dir)
    assert sorted(p.name for p in lr_dir.iterdir()) == ["0001x4.png", "0002x4.png"]
    # What a kill leaves: the temporary of a write in flight, and a PNG cut short by an older copy.
    (lr_dir / ".0003x4.png.4194305.0123abcd.tmp").write_bytes(b"\x89PNG partial")
    (lr_dir / "0004x4.png").write_bytes(good[3].read_bytes()[:200])
    mtimes = {n: (lr_dir / n).stat().st_mtime_ns for n in ("0001x4.png", "0002x4.png")}
    writes.clear()
    monkeypatch.setattr(
        prepare_mod, "save_png", lambda image, path: writes.append(path.name) or save_png(image, path)
    )
    _prepare(hr_dir)
    assert writes == ["0003x4.png", "0004x4.png", "0005x4.png"]
    names = sorted(p.name for p in lr_dir.iterdir())
    assert names == [f"{i:04d}x4.png" for i in range(1, 6)]  # no temporary file left
    assert {n: (lr_dir / n).stat().st_mtime_ns for n in mtimes} == mtimes
    for mine, reference in zip(sorted(lr_dir.iterdir()), good):
        assert torch.equal(read_image(mine), read_image(reference))
    writes.clear()
    _prepare(hr_dir)
    assert writes == []  # a finished folder is left alone


def test_lr_file_of_the_wrong_size_is_rewritten(hr_folder, tmp_path):
    lr_dir = tmp_path / "lr"
    first = generate_lr_folder(hr_folder, lr_dir, 4)
    expected = read_image(first[0])
    save_png(expected[:, :-1], first[0])
    generate_lr_folder(hr_folder, lr_dir, 4)
    assert torch.equal(read_image(first[0]), expected)


def test_hr_too_small_to_downscale_is_refused_before_writing(hr_folder, tmp_path, png_writer, photos_uint8):
    small = png_writer(hr_folder / "d.png", photos_uint8["coffee"][:7, :30].copy())
    with pytest.raises(ValueError) as err:
        generate_lr_folder(hr_folder, tmp_path / "lr", 4)
    assert str(err.value).splitlines() == [
        "1 of 4 HR images cannot be used (MATLAB bicubic downscaling needs HR sides of at least 8); "
        "remove or replace them:",
        f"  {small}: HR 7x30 (LR 1x7) is smaller than HR 8x8 (LR 2x2)",
    ]
    assert not (tmp_path / "lr").exists()
