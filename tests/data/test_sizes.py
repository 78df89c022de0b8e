"""Image sizes are checked when a dataset is built: what a user sees before any training or evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import meta_kd_sr.data.embedded as embedded_mod
import meta_kd_sr.data.paired as paired_mod
from meta_kd_sr.cli.evaluate import evaluate
from meta_kd_sr.data.datasets import DIV2K, ImageFolderSR
from meta_kd_sr.data.embedded import EmbeddedPhotos
from meta_kd_sr.data.io import read_image, to_float
from meta_kd_sr.data.transforms import bicubic_downscale, crop_to_multiple
from meta_kd_sr.evaluation.inference import upscale_bicubic

LR_X4 = "DIV2K_train_LR_bicubic/X4"
EVAL_X4 = (
    "1 of {n} evaluation images cannot be used (x4 evaluation needs HR images of at least 12x12 (LR 3x3): "
    "MATLAB bicubic upscales the LR for the bicubic baseline, and makes a missing LR from HR sides >= 8); "
    "remove or replace them:"
)


def _crop(photos, name: str, h: int, w: int) -> np.ndarray:
    return photos[name][100 : 100 + h, 120 : 120 + w].copy()


def test_patch_larger_than_an_image_is_refused_when_built(div2k_root):
    """Every image is checked when the dataset is built: one message lists all images the patch misses."""
    with pytest.raises(ValueError) as err:
        DIV2K(div2k_root, 4, index_range=(1, 5), patch_size=72, cache="memory")
    lines = str(err.value).splitlines()
    assert lines[0] == (
        "4 of 5 training images cannot be used (the x4 training patch is HR 72x72 = LR 18x18; MATLAB "
        "bicubic makes a missing LR from HR sides >= 8); remove or replace them:"
    )
    hr = div2k_root / "DIV2K_train_HR"
    assert lines[1:] == [
        f"  {hr / '0001.png'}: HR 64x80 (LR 16x20) is smaller than HR 72x72 (LR 18x18)",
        f"  {hr / '0002.png'}: HR 72x64 (LR 18x16) is smaller than HR 72x72 (LR 18x18)",
        f"  {hr / '0003.png'}: HR 64x88 (LR 16x22) is smaller than HR 72x72 (LR 18x18)",
        f"  {hr / '0005.png'}: HR 66x83 (LR 16x20) is smaller than HR 72x72 (LR 18x18)",
    ]


def test_lr_on_disk_with_wrong_size_names_the_file(div2k_root, png_writer):
    wrong = read_image(div2k_root / "DIV2K_train_HR/0002.png")[:, ::5, ::5]  # not 1/4 of the HR size
    png_writer(div2k_root / LR_X4 / "0002x4.png", wrong.permute(1, 2, 0).numpy().copy())
    with pytest.raises(ValueError) as err:
        DIV2K(div2k_root, 4, index_range=(1, 5), train=False, cache="none")
    assert str(err.value).splitlines()[1] == (
        f"  {div2k_root / LR_X4 / '0002x4.png'}: HR/LR size mismatch: LR is 15x13 but HR "
        f"{div2k_root / 'DIV2K_train_HR/0002.png'} is 72x64, which needs LR 18x16 at x4"
    )


def test_training_folder_with_one_small_image_is_refused_when_built(hr_folder, photos_uint8, png_writer):
    small = png_writer(hr_folder / "d.png", _crop(photos_uint8, "rocket", 30, 41))
    with pytest.raises(ValueError) as err:
        ImageFolderSR(hr_folder, 2, train=True, patch_size=32)
    assert str(err.value).splitlines() == [
        "1 of 4 training images cannot be used (the x2 training patch is HR 32x32 = LR 16x16; MATLAB bicubic "
        "makes a missing LR from HR sides >= 4); remove or replace them:",
        f"  {small}: HR 30x41 (LR 15x20) is smaller than HR 32x32 (LR 16x16)",
    ]
    assert len(ImageFolderSR(hr_folder, 2, train=True, patch_size=30)) == 4  # the same folder fits HR 30


def test_sizes_are_read_from_headers_and_images_decoded_once(hr_folder, monkeypatch):
    decoded = []
    monkeypatch.setattr(paired_mod, "read_image", lambda path: decoded.append(path) or read_image(path))
    ds = ImageFolderSR(hr_folder, 2, train=True, patch_size=20, cache="memory")
    assert decoded == []  # building the dataset checked every size without decoding a pixel
    ds.preload()
    [ds[i] for i in range(3)]
    assert sorted(p.name for p in decoded) == ["a.png", "b.png", "c.png"]


def test_div2k_small_image_is_refused_before_any_file_is_written(
    div2k_root, photos_uint8, png_writer, tmp_path
):
    png_writer(div2k_root / "DIV2K_train_HR" / "0006.png", _crop(photos_uint8, "coffee", 70, 63))
    with pytest.raises(ValueError) as err:
        DIV2K(div2k_root, 4, index_range=(1, 6), patch_size=64, cache="npy", cache_dir=tmp_path / "c")
    assert str(err.value).splitlines()[-1] == (
        f"  {div2k_root / 'DIV2K_train_HR' / '0006.png'}: HR 70x63 (LR 17x15) is smaller than HR 64x64 "
        "(LR 16x16)"
    )
    assert not (tmp_path / "c").exists() and not (div2k_root / "DIV2K_train_LR_bicubic").exists()


def test_lr_file_smaller_than_the_patch_is_named(hr_folder, tmp_path, png_writer, photos_uint8):
    lr_dir = tmp_path / "lr"
    for stem in "abc":  # LR files made from other pictures: only their sizes matter here
        hr = read_image(hr_folder / f"{stem}.png")
        png_writer(lr_dir / f"{stem}x2.png", np.zeros((hr.shape[1] // 2, hr.shape[2] // 2, 3), np.uint8))
    png_writer(lr_dir / "bx2.png", np.zeros((30, 32, 3), np.uint8))  # b.png is 72x64: needs LR 36x32
    with pytest.raises(ValueError) as err:
        ImageFolderSR(hr_folder, 2, lr_dir=lr_dir, train=True, patch_size=32)
    assert str(err.value).splitlines()[1] == (
        f"  {lr_dir / 'bx2.png'}: HR/LR size mismatch: LR is 30x32 but HR {hr_folder / 'b.png'} is 72x64, "
        "which needs LR 36x32 at x2"
    )


def test_embedded_photo_smaller_than_the_patch_is_refused(monkeypatch):
    loads, load_photo = [], embedded_mod.load_photo
    monkeypatch.setattr(embedded_mod, "_PAIRS", {})
    monkeypatch.setattr(embedded_mod, "load_photo", lambda name: loads.append(name) or load_photo(name))
    with pytest.raises(ValueError) as err:
        EmbeddedPhotos(["coffee", "chelsea"], 4, train=True, patch_size=304)
    assert str(err.value).splitlines()[1] == (
        "  embedded photo chelsea: HR 300x448 (LR 75x112) is smaller than HR 304x304 (LR 76x76)"
    )
    ds = EmbeddedPhotos(["coffee", "chelsea"], 4, train=True, patch_size=296, samples_per_epoch=4)
    assert [ds[i]["gt"].shape for i in range(4)] == [(3, 296, 296)] * 4
    assert sorted(loads) == ["chelsea", "coffee"]  # each photo decoded once, for the check and the items


def test_eval_image_8x8_at_x4_is_refused_with_the_minimum(tmp_path, png_writer, photos_uint8):
    folder = tmp_path / "tiny" / "HR"
    png_writer(folder / "big.png", _crop(photos_uint8, "chelsea", 40, 40))
    small = png_writer(folder / "small.png", _crop(photos_uint8, "chelsea", 8, 8))
    with pytest.raises(ValueError) as err:
        ImageFolderSR(folder, 4)
    assert str(err.value).splitlines() == [
        EVAL_X4.format(n=2),
        f"  {small}: HR 8x8 (LR 2x2) is smaller than HR 12x12 (LR 3x3)",
    ]


@pytest.mark.parametrize(("side", "fits"), [(11, False), (12, True), (13, True)])
def test_eval_minimum_is_the_bicubic_boundary(tmp_path, png_writer, photos_uint8, side, fits):
    """12x12 at x4 is the smallest image whose LR (3x3) MATLAB bicubic makes and upscales back."""
    path = png_writer(tmp_path / "set" / "HR" / "img.png", _crop(photos_uint8, "astronaut", side, side))
    if not fits:
        with pytest.raises(ValueError, match=r"HR 11x11 \(LR 2x2\) is smaller than HR 12x12 \(LR 3x3\)"):
            ImageFolderSR(path.parent, 4)
        return
    item = ImageFolderSR(path.parent, 4)[0]
    gt = crop_to_multiple(read_image(path), 4).contiguous()
    assert torch.equal(item["lq"], to_float(bicubic_downscale(gt, 4)))
    assert upscale_bicubic(item["lq"], 4).shape == (3, 12, 12)


def test_evaluate_refuses_an_8x8_image_naming_it(tmp_path, png_writer, photos_uint8):
    small = png_writer(tmp_path / "tiny" / "HR" / "small.png", _crop(photos_uint8, "coffee", 8, 8))
    cfg = OmegaConf.create(
        {
            "ckpt_path": "bicubic",
            "format": None,
            "scale": 4,
            "hr_dirs": [str(small.parent)],
            "output_json": None,
            "crop_border": None,
            "self_ensemble": False,
            "tile": None,
            "tile_overlap": 16,
            "device": "cpu",
        }
    )
    with pytest.raises(ValueError) as err:
        evaluate(cfg)
    assert str(err.value).splitlines()[1] == f"  {small}: HR 8x8 (LR 2x2) is smaller than HR 12x12 (LR 3x3)"
