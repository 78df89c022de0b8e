from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

import meta_kd_sr.data.datasets as datasets_mod
import meta_kd_sr.data.paired as paired_mod
from meta_kd_sr.data.datasets import DIV2K, ImageFolderSR
from meta_kd_sr.data.io import read_image, to_float
from meta_kd_sr.data.paired import SampleKey, sample_generator
from meta_kd_sr.data.transforms import bicubic_downscale, crop_to_multiple, random_crop_coords

LR_X4 = "DIV2K_train_LR_bicubic/X4"


def _expected_lq(hr_path, scale=4):
    return bicubic_downscale(crop_to_multiple(read_image(hr_path), scale).contiguous(), scale)


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# -- DIV2K: LR generation and caches ---------------------------------------------------------------


def test_missing_lr_is_generated_once_into_the_official_folder(div2k_root):
    ds = DIV2K(div2k_root, 4, index_range=(1, 5), train=False, cache="none")
    with pytest.raises(FileNotFoundError, match=r"LR image of '0001' not found .* call prepare\(\)"):
        ds[0]  # reading never writes
    written = ds.prepare()
    lr_dir = div2k_root / LR_X4
    assert sorted(p.name for p in written) == [f"{i:04d}x4.png" for i in range(1, 6)]
    for i in range(1, 6):
        assert torch.equal(
            read_image(lr_dir / f"{i:04d}x4.png"), _expected_lq(div2k_root / f"DIV2K_train_HR/{i:04d}.png")
        )
    mtimes = {p: p.stat().st_mtime_ns for p in lr_dir.iterdir()}
    again = DIV2K(div2k_root, 4, index_range=(1, 5), train=False, cache="none")
    assert again.prepare() == []
    assert {p: p.stat().st_mtime_ns for p in lr_dir.iterdir()} == mtimes
    assert not [p for p in div2k_root.rglob("*.tmp")]


def test_eval_items_are_full_cropped_images(div2k_root):
    ds = DIV2K(div2k_root, 4, index_range=(1, 5), train=False, cache="none")
    ds.prepare()
    item = ds[4]  # 66 x 83 HR -> cropped to 64 x 80
    hr = read_image(div2k_root / "DIV2K_train_HR/0005.png")
    assert item["name"] == "0005" and len(ds) == 5
    assert item["gt"].dtype == torch.float32 and item["gt"].shape == (3, 64, 80)
    assert torch.equal(item["gt"], to_float(hr[:, :64, :80]))
    assert torch.equal(item["lq"], to_float(read_image(div2k_root / LR_X4 / "0005x4.png")))
    with pytest.raises(IndexError):
        ds[5]


def test_unwritable_official_folder_falls_back_to_cache_dir(div2k_root, tmp_path, monkeypatch):
    official = div2k_root / LR_X4
    monkeypatch.setattr(datasets_mod, "_writable", lambda folder: folder != official)
    ds = DIV2K(div2k_root, 4, index_range=(1, 2), train=False, cache="none", cache_dir=tmp_path / "cache")
    written = ds.prepare()
    assert [p.parent for p in written] == [tmp_path / "cache" / "DIV2K_train_LR_bicubic"] * 2
    assert not official.exists()
    assert torch.equal(ds[1]["lq"], to_float(_expected_lq(div2k_root / "DIV2K_train_HR/0002.png")))


def test_npy_cache_is_written_by_prepare_only(div2k_root, tmp_path):
    ds = DIV2K(div2k_root, 4, index_range=(1, 5), patch_size=16, cache="npy", cache_dir=tmp_path / "c")
    with pytest.raises(FileNotFoundError, match=r"decoded cache file .*-lq.npy is missing: call prepare\(\)"):
        ds[0]
    ds.prepare()
    npy = sorted((tmp_path / "c" / "npy").iterdir())
    assert len(npy) == 10 and all(p.suffix == ".npy" for p in npy)
    mtimes = [p.stat().st_mtime_ns for p in npy]
    again = DIV2K(div2k_root, 4, index_range=(1, 5), patch_size=16, cache="npy", cache_dir=tmp_path / "c")
    assert again.prepare() == []
    assert [p.stat().st_mtime_ns for p in npy] == mtimes
    gt = np.load(next(p for p in npy if p.name.startswith("0002") and p.name.endswith("gt.npy")))
    assert np.array_equal(gt, read_image(div2k_root / "DIV2K_train_HR/0002.png").permute(1, 2, 0).numpy())


def test_npy_memory_maps_are_bounded_and_not_pickled(div2k_root, tmp_path, monkeypatch):
    monkeypatch.setattr(paired_mod, "MAX_OPEN_MAPS", 2)
    ds = DIV2K(div2k_root, 4, index_range=(1, 5), train=False, cache="npy", cache_dir=tmp_path / "c")
    ds.prepare()
    first = [ds[i]["gt"] for i in range(5)]
    assert list(ds._mmaps) == [3, 4]  # least recently used maps were closed
    copy = pickle.loads(pickle.dumps(ds))
    assert len(copy._mmaps) == 0
    assert all(torch.equal(copy[i]["gt"], first[i]) for i in range(5))


def test_default_cache_dir_is_under_root(div2k_root):
    ds = DIV2K(div2k_root, 4, index_range=(1, 1), patch_size=16, cache="npy")
    ds.prepare()
    assert len(list((div2k_root / ".cache_meta_kd_sr" / "X4" / "npy").glob("0001-*.npy"))) == 2


def test_cache_modes_give_identical_items(div2k_root, tmp_path):
    kwargs = dict(index_range=(1, 5), patch_size=24, samples_per_epoch=12, cache_dir=tmp_path / "c")
    sets = {mode: DIV2K(div2k_root, 4, cache=mode, **kwargs) for mode in ("npy", "memory", "none")}
    sets["npy"].prepare()
    for key in [SampleKey(i, epoch=e, seed=7) for i in range(12) for e in (0, 1)]:
        items = [sets[mode][key] for mode in ("npy", "memory", "none")]
        for item in items[1:]:
            assert item["name"] == items[0]["name"]
            assert torch.equal(item["lq"], items[0]["lq"]) and torch.equal(item["gt"], items[0]["gt"])
    eval_sets = [DIV2K(div2k_root, 4, train=False, cache=m, **kwargs) for m in ("npy", "memory", "none")]
    assert all(torch.equal(s[3]["gt"], eval_sets[0][3]["gt"]) for s in eval_sets)


def test_train_items_are_aligned_reproducible_crops(div2k_root):
    ds = DIV2K(
        div2k_root, 4, index_range=(1, 5), patch_size=32, augment=False, samples_per_epoch=11, cache="memory"
    )
    ds.prepare()
    assert len(ds) == 11
    key = SampleKey(7, epoch=3, seed=5)
    item = ds[key]
    assert item["name"] == "0003"  # 7 % 5 images
    lq = read_image(div2k_root / LR_X4 / "0003x4.png")
    gt = read_image(div2k_root / "DIV2K_train_HR/0003.png")
    top, left = random_crop_coords(lq.shape[1], lq.shape[2], 8, sample_generator(key))
    assert torch.equal(item["lq"], to_float(lq[:, top : top + 8, left : left + 8]))
    assert torch.equal(item["gt"], to_float(gt[:, 4 * top : 4 * top + 32, 4 * left : 4 * left + 32]))
    assert torch.equal(ds[key]["gt"], item["gt"])
    assert not torch.equal(ds[SampleKey(7, epoch=4, seed=5)]["gt"], item["gt"])


def test_augmented_items_keep_the_pair_relation(div2k_root):
    ds = DIV2K(div2k_root, 2, index_range=(1, 5), patch_size=16, samples_per_epoch=16, cache="memory")
    ds.prepare()
    for i in range(16):
        item = ds[i]
        own = bicubic_downscale((item["gt"] * 255).round().to(torch.uint8), 2).float() / 255
        assert (own - item["lq"])[:, 2:-2, 2:-2].abs().max() <= 1.5 / 255


# -- DIV2K: layout and bad inputs ------------------------------------------------------------------


def test_validation_indices_are_found_in_the_valid_folder(div2k_root):
    valid = div2k_root / "DIV2K_valid_HR"
    valid.mkdir()
    for i in (1, 2):
        os.replace(div2k_root / f"DIV2K_train_HR/{i:04d}.png", valid / f"{800 + i:04d}.png")
    ds = DIV2K(div2k_root, 4, index_range=(801, 802), train=False, cache="none")
    written = ds.prepare()
    assert [p.relative_to(div2k_root).as_posix() for p in written] == [
        "DIV2K_valid_LR_bicubic/X4/0801x4.png",
        "DIV2K_valid_LR_bicubic/X4/0802x4.png",
    ]
    assert ds.image_names == ("0801", "0802")


def test_missing_root_names_path_and_expected_files(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"DIV2K HR folder not found: expected PNG files 0001..0800 in .*nope/DIV2K_train_HR",
    ):
        DIV2K(tmp_path / "nope", 4)


def test_empty_folder_names_path_and_range(tmp_path):
    (tmp_path / "DIV2K_train_HR").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no PNG files 0001..0800 in .*DIV2K_train_HR"):
        DIV2K(tmp_path, 4)


def test_partially_missing_range_is_reported(div2k_root):
    with pytest.raises(
        FileNotFoundError, match=r"3 of 8 DIV2K HR images 0001..0008 are missing .*first: 0006.png"
    ):
        DIV2K(div2k_root, 4, index_range=(1, 8))


@pytest.mark.parametrize("scale", [1, 5, 8])
def test_unsupported_scale(div2k_root, scale):
    with pytest.raises(ValueError, match=f"unsupported scale {scale}"):
        DIV2K(div2k_root, scale, index_range=(1, 5))


def test_corrupt_hr_is_named(div2k_root):
    (div2k_root / "DIV2K_train_HR/0003.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(ValueError, match=r"cannot decode image .*0003.png"):
        DIV2K(div2k_root, 4, index_range=(1, 5), train=False, cache="none")


@pytest.mark.parametrize("patch_size", [None, 30, 0])
def test_train_mode_needs_a_patch_multiple_of_the_scale(div2k_root, patch_size):
    with pytest.raises(
        ValueError, match=f"patch_size \\(HR\\) must be a positive multiple of scale 4, got {patch_size}"
    ):
        DIV2K(div2k_root, 4, index_range=(1, 5), patch_size=patch_size)


def test_unknown_cache_mode(div2k_root):
    with pytest.raises(ValueError, match="unknown cache mode 'disk'"):
        DIV2K(div2k_root, 4, index_range=(1, 5), cache="disk")


# -- ImageFolderSR ---------------------------------------------------------------------------------


def test_folder_sorted_cropped_and_lr_generated_in_memory(hr_folder):
    before = _files(hr_folder.parent)
    ds = ImageFolderSR(hr_folder, 3)
    assert ds.image_names == ("a", "b", "c") and len(ds) == 3
    assert ds.prepare() == []
    item = ds[2]  # c: 66 x 83 -> 66 x 81
    assert item["gt"].shape == (3, 66, 81)
    assert torch.equal(item["lq"], to_float(_expected_lq(hr_folder / "c.png", 3)))
    assert _files(hr_folder.parent) == before  # nothing written next to the user's images


def test_folder_generated_lr_cached_as_png_in_cache_dir(hr_folder, tmp_path):
    ds = ImageFolderSR(hr_folder, 2, cache="none", cache_dir=tmp_path / "cache")
    written = ds.prepare()
    assert [p.name for p in written] == ["ax2.png", "bx2.png", "cx2.png"]
    assert all(tmp_path / "cache" in p.parents for p in written)
    assert _files(hr_folder) == ["a.png", "b.png", "c.png"]
    assert torch.equal(read_image(written[1]), _expected_lq(hr_folder / "b.png", 2))
    assert ImageFolderSR(hr_folder, 2, cache="none", cache_dir=tmp_path / "cache").prepare() == []


def test_folder_uses_sibling_lr_layout(hr_folder, png_writer):
    lr_dir = hr_folder.parent / "LR_bicubic" / "X4"
    marks = {}
    for stem in ("a", "b", "c"):
        gt = crop_to_multiple(read_image(hr_folder / f"{stem}.png"), 4)
        lq = (255 - bicubic_downscale(gt.contiguous(), 4)).permute(1, 2, 0).numpy().copy()  # recognisable
        marks[stem] = png_writer(lr_dir / f"{stem}x4.png", lq)
    ds = ImageFolderSR(hr_folder, 4)
    assert ds.lr_dir == lr_dir
    assert torch.equal(ds[0]["lq"], to_float(read_image(marks["a"])))


def test_folder_explicit_lr_dir_missing_file(hr_folder, tmp_path):
    (tmp_path / "lr").mkdir()
    with pytest.raises(
        FileNotFoundError, match=r"no LR image for a.png in .*lr \(expected ax4.png or a.png\)"
    ):
        ImageFolderSR(hr_folder, 4, lr_dir=tmp_path / "lr")
    with pytest.raises(FileNotFoundError, match="LR folder not found"):
        ImageFolderSR(hr_folder, 4, lr_dir=tmp_path / "missing")


def test_folder_bad_inputs(hr_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"HR folder not found: .*nothing"):
        ImageFolderSR(tmp_path / "nothing", 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no images \(.png, .bmp.*\) in .*empty"):
        ImageFolderSR(tmp_path / "empty", 4)
    with pytest.raises(ValueError, match="cache='npy' needs a cache_dir"):
        ImageFolderSR(hr_folder, 4, cache="npy")
    with pytest.raises(ValueError, match="cache_dir must not be the HR folder"):
        ImageFolderSR(hr_folder, 4, cache_dir=hr_folder)
    with pytest.raises(ValueError, match="patch_size"):
        ImageFolderSR(hr_folder, 4, train=True)


def test_folder_grayscale_image_becomes_rgb(hr_folder, photos_uint8, png_writer):
    png_writer(hr_folder / "d.png", photos_uint8["chelsea"][:48, :60, 1].copy())
    gt = ImageFolderSR(hr_folder, 4)[3]["gt"]
    assert gt.shape == (3, 48, 60) and torch.equal(gt[0], gt[1]) and torch.equal(gt[1], gt[2])


def test_folder_train_mode_with_npy_cache(hr_folder, tmp_path):
    ds = ImageFolderSR(
        hr_folder,
        2,
        train=True,
        patch_size=20,
        augment=True,
        samples_per_epoch=6,
        cache="npy",
        cache_dir=tmp_path / "c",
    )
    ds.prepare()
    items = [ds[i] for i in range(6)]
    assert [it["name"] for it in items] == ["a", "b", "c", "a", "b", "c"]
    assert all(it["lq"].shape == (3, 10, 10) and it["gt"].shape == (3, 20, 20) for it in items)
