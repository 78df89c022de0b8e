from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from meta_kd_sr.data.io import (
    list_images,
    read_image,
    read_image_size,
    save_npy,
    save_png,
    to_float,
    to_uint8,
)
from meta_kd_sr.runtime.atomic import remove_stale_temporaries


def _png16(path: Path, array: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB(A) PNG written by hand (PIL cannot write one)."""
    h, w, c = array.shape
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path


def write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def rgb(photos_uint8) -> np.ndarray:
    return photos_uint8["coffee"][100:148, 200:264].copy()


def test_read_rgb_png_round_trip(tmp_path, rgb):
    image = read_image(write_png(tmp_path / "x.png", rgb))
    assert image.dtype == torch.uint8
    assert torch.equal(image, torch.from_numpy(rgb).permute(2, 0, 1))


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="image file not found: .*nothere.png"):
        read_image(tmp_path / "nothere.png")


def test_truncated_png_raises_value_error(tmp_path, rgb):
    data = write_png(tmp_path / "full.png", rgb).read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot decode image .*truncated.png: corrupt or truncated"):
        read_image(truncated)


def test_garbage_file_raises_value_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match=r"cannot decode image .*bad.png"):
        read_image(bad)


def test_grayscale_is_replicated_to_rgb(tmp_path, photos_uint8):
    gray = photos_uint8["astronaut"][:32, :40, 0].copy()
    image = read_image(write_png(tmp_path / "g.png", gray))
    assert image.shape == (3, 32, 40)
    for c in range(3):
        assert torch.equal(image[c], torch.from_numpy(gray))


def test_palette_is_converted_to_rgb(tmp_path, rgb):
    pal = Image.fromarray(rgb).quantize(colors=16)
    pal.save(tmp_path / "p.png")
    expected = np.array(pal.convert("RGB"))
    assert torch.equal(read_image(tmp_path / "p.png"), torch.from_numpy(expected).permute(2, 0, 1))


def test_opaque_rgba_is_accepted(tmp_path, rgb):
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert torch.equal(
        read_image(write_png(tmp_path / "a.png", rgba)), torch.from_numpy(rgb).permute(2, 0, 1)
    )


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparency_is_refused(tmp_path, rgb, mode):
    alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
    alpha[3, 5] = 128
    array = np.concatenate([rgb if mode == "RGBA" else rgb[..., :1], alpha], axis=2)
    path = write_png(tmp_path / "t.png", array)
    assert Image.open(path).mode == mode
    with pytest.raises(ValueError, match="t.png has transparency"):
        read_image(path)


def test_palette_transparency_is_refused(tmp_path, rgb):
    pal = Image.fromarray(rgb).quantize(colors=8)
    pal.save(tmp_path / "pt.png", transparency=0)
    with pytest.raises(ValueError, match="has transparency"):
        read_image(tmp_path / "pt.png")


def test_16bit_gray_is_refused(tmp_path):
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 15).astype(np.uint16)).save(tmp_path / "g16.png")
    with pytest.raises(ValueError, match="g16.png: only 8-bit images are supported"):
        read_image(tmp_path / "g16.png")


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_rgb_is_refused_not_truncated(tmp_path, channels):
    # PIL would silently decode this as 8-bit RGB(A).
    path = _png16(tmp_path / "c16.png", np.random.default_rng(0).integers(0, 65535, (8, 8, channels)))
    with pytest.raises(ValueError, match="only 8-bit images are supported"):
        read_image(path)


def test_save_png_round_trip_is_atomic(tmp_path, rgb):
    image = torch.from_numpy(rgb).permute(2, 0, 1)
    path = save_png(image, tmp_path / "sub" / "out.png")
    assert np.array_equal(np.asarray(Image.open(path)), rgb)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.png"]  # no temporary file left


def test_save_png_rejects_float(tmp_path):
    with pytest.raises(
        ValueError, match=r"\(3, H, W\) uint8 tensor, got torch.float32 tensor of shape \(3, 4, 4\)"
    ):
        save_png(torch.zeros(3, 4, 4), tmp_path / "x.png")


def test_save_npy_round_trip(tmp_path, rgb):
    path = save_npy(rgb, tmp_path / "a.npy")
    assert np.array_equal(np.load(path, mmap_mode="r"), rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]


def test_to_float_and_to_uint8_round_trip_every_level():
    levels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_float(levels), levels.float() / 255)
    assert torch.equal(to_uint8(to_float(levels)), levels)


def test_to_uint8_clamps_and_rounds_half_up():
    x = torch.tensor([-0.3, 1.7, 0.2, 2.5 / 255, 3.5 / 255, 3.49 / 255], dtype=torch.float64)
    assert to_uint8(x).tolist() == [0, 255, 51, 3, 4, 3]


def test_conversions_reject_wrong_dtypes():
    with pytest.raises(ValueError, match="to_float expects a uint8 tensor, got torch.float32"):
        to_float(torch.zeros(2))
    with pytest.raises(ValueError, match="to_uint8 expects a float tensor, got torch.uint8"):
        to_uint8(torch.zeros(2, dtype=torch.uint8))


def test_list_images_sorted_and_filtered(tmp_path, rgb):
    for name in ("b.png", "a.JPG", "c.bmp"):
        Image.fromarray(rgb).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.bmp"]
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        list_images(tmp_path / "missing")


def test_read_image_size_reads_the_header_only(tmp_path, rgb, monkeypatch):
    png = write_png(tmp_path / "x.png", rgb)
    jpg = tmp_path / "x.jpg"
    Image.fromarray(rgb).save(jpg, quality=90)
    for cls in (Image.Image, ImageFile.ImageFile):
        monkeypatch.setattr(cls, "load", lambda self: pytest.fail("pixels decoded"))
    assert read_image_size(png) == read_image_size(jpg) == (48, 64)
    with pytest.raises(pytest.fail.Exception, match="pixels decoded"):
        read_image(png)  # the guard works: decoding is caught


def test_read_image_size_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"image file not found: .*nope.png"):
        read_image_size(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"cannot decode image .*bad.png: corrupt or truncated"):
        read_image_size(tmp_path / "bad.png")


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path, rgb):
    dead = tmp_path / ".0001x4.png.4194305.0123abcd.tmp"  # above Linux's largest pid: never running
    alive = tmp_path / f".0002x4.png.{os.getpid()}.89abcdef.tmp"
    other = tmp_path / ".notes.tmp"
    for path in (dead, alive, other):
        path.write_bytes(b"partial")
    save_png(torch.from_numpy(rgb).permute(2, 0, 1), tmp_path / "0003x4.png")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name, "0003x4.png"])
    assert remove_stale_temporaries(tmp_path / "missing") == []
