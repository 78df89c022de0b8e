"""``meta_kd_sr.data.imresize`` against an independent float64 port of MATLAB's ``imresize`` (bicubic).

Images are compared as MATLAB users see them: uint8 levels ``floor(clip(255 * y) + 0.5)``. A float32
result can land on the other side of a rounding tie than the float64 reference when the reference value is
within float32 error of ``k + 0.5``; only such pixels may differ, and only by one level.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from bicubic_pytorch import core as bicubic_core

from helpers.oracles import load_oracle
from meta_kd_sr.data.imresize import imresize, imresize_uint8, min_resizable, resizable

ref = load_oracle("matlab_imresize_reference")

FLOAT32_TIE_BAND = 2e-4  # in uint8 levels; observed float32 error of the library <= 8e-5 levels
FLOAT64_TIE_BAND = 1e-9


def _library(img_uint8: np.ndarray, scale: float) -> np.ndarray:
    """Library output on the uint8 scale: (H, W, 3) uint8 -> (h, w, 3) float64 in [0, 255] (unrounded)."""
    x = torch.from_numpy(img_uint8.copy()).permute(2, 0, 1).float() / 255
    return imresize(x, scale).permute(1, 2, 0).double().numpy() * 255


def _to_levels(y: np.ndarray) -> np.ndarray:
    return np.floor(np.clip(y, 0, 255) + 0.5).astype(np.int64)


def _assert_same_levels(out: np.ndarray, expected: np.ndarray, tie_band: float) -> int:
    """Rounded outputs are identical except next to rounding ties; returns the number of tie flips."""
    assert out.shape == expected.shape
    differ = _to_levels(out) != _to_levels(expected)
    distance_to_tie = np.abs(expected - np.floor(expected) - 0.5)
    assert (distance_to_tie[differ] < tie_band).all(), "pixels differ away from a rounding tie"
    assert np.abs(_to_levels(out) - _to_levels(expected)).max() <= 1
    assert differ.sum() <= 1e-4 * differ.size
    return int(differ.sum())


def _crop_to_multiple(img: np.ndarray, scale: int) -> np.ndarray:
    return img[: img.shape[0] // scale * scale, : img.shape[1] // scale * scale]


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_downscale_matches_matlab_on_real_photos(photos_uint8, scale):
    for img in photos_uint8.values():
        hr = _crop_to_multiple(img, scale)
        expected = ref.matlab_imresize(hr, 1 / scale)
        out = _library(hr, 1 / scale)
        assert out.shape == (hr.shape[0] // scale, hr.shape[1] // scale, 3)
        assert np.abs(out - expected).max() < FLOAT32_TIE_BAND
        _assert_same_levels(out, expected, FLOAT32_TIE_BAND)


def test_upscale_x4_matches_matlab_on_real_photos(photos_uint8):
    for img in photos_uint8.values():
        lq = ref.matlab_imresize_uint8(_crop_to_multiple(img, 4)[:256, :256], 1 / 4)
        expected = ref.matlab_imresize(lq, 4)
        out = _library(lq, 4)
        assert out.shape == (lq.shape[0] * 4, lq.shape[1] * 4, 3)
        assert np.abs(out - expected).max() < FLOAT32_TIE_BAND
        _assert_same_levels(out, expected, FLOAT32_TIE_BAND)


def test_sizes_not_multiple_of_scale_round_up_like_matlab(photos_uint8):
    img = photos_uint8["chelsea"][50:151, 70:147]  # 101 x 77
    expected = ref.matlab_imresize(img, 1 / 3)
    out = _library(img, 1 / 3)
    assert out.shape == expected.shape == (34, 26, 3)
    assert np.abs(out - expected).max() < FLOAT32_TIE_BAND


@pytest.mark.parametrize("scale", [2, 4])
def test_float64_algorithm_matches_matlab_exactly(photos_uint8, scale):
    """The float32 tie flips are precision only: the same algorithm in float64 matches to 1e-9 levels.

    ``imresize`` computes in float32 whatever the input dtype, so the float64 path is the backend's
    one-dimensional pass applied directly (height first, as MATLAB does for equal scales).
    """
    hr = _crop_to_multiple(photos_uint8["astronaut"], scale)
    x = torch.from_numpy(hr.copy()).permute(2, 0, 1).double()[:, None] / 255
    y = bicubic_core.resize_1d(x, -2, size=hr.shape[0] // scale, scale=1 / scale)
    y = bicubic_core.resize_1d(y, -1, size=hr.shape[1] // scale, scale=1 / scale)
    out = y[:, 0].permute(1, 2, 0).numpy() * 255
    expected = ref.matlab_imresize(hr, 1 / scale)
    assert np.abs(out - expected).max() < FLOAT64_TIE_BAND
    _assert_same_levels(out, expected, FLOAT64_TIE_BAND)


def test_oracle_kernel_known_values():
    # MATLAB's cubic (a = -0.5) at known points and the x2 antialiased taps (kernel width 8).
    points = np.array([0, 0.5, 1, 1.5, 2, -0.5])
    np.testing.assert_allclose(ref.cubic(points), [1, 0.5625, 0, -0.0625, 0, 0.5625])
    weights, indices = ref.contributions(in_length=8, out_length=4, scale=0.5)
    taps = np.array([-0.0234375, -0.0703125, 0.2265625, 0.8671875])
    np.testing.assert_allclose(weights[1], np.concatenate([taps, taps[::-1]]) / 2, atol=1e-15)
    assert indices[0].tolist() == [2, 1, 0, 0, 1, 2, 3, 4]  # symmetric mirror: ..., 2, 1, 0 | 0, 1, 2, ...


@pytest.mark.parametrize(
    ("x", "scale", "message"),
    [
        (torch.zeros(3, 8, 8).byte(), 0.5, "imresize expects a float tensor, got Tensor torch.uint8"),
        (torch.zeros(8, 8), 0.5, "imresize expects (C, H, W) or (B, C, H, W), got shape (8, 8)"),
        (torch.zeros(3, 8, 8), 0, "imresize scale must be positive, got 0"),
        (torch.zeros(3, 8, 8), -2.0, "imresize scale must be positive, got -2.0"),
    ],
)
def test_bad_inputs(x, scale, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        imresize(x, scale)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_uint8_path_matches_matlab_uint8_exactly(photos_uint8, scale):
    """LR made from a uint8 HR like MATLAB (rounded between passes) is identical, pixel for pixel."""
    for name in ("astronaut", "coffee"):
        img = photos_uint8[name]
        h, w = (img.shape[0] // scale) * scale, (img.shape[1] // scale) * scale
        img = np.ascontiguousarray(img[:h, :w])
        out = imresize_uint8(torch.from_numpy(img).permute(2, 0, 1), 1 / scale).permute(1, 2, 0).numpy()
        expected = ref.matlab_imresize_uint8(img, 1 / scale)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, expected)


def test_uint8_path_rejects_float():
    with pytest.raises(ValueError, match="expects a uint8 tensor"):
        imresize_uint8(torch.rand(3, 8, 8), 0.5)


def _backend_resizes(length: int, scale: float) -> bool:
    x = torch.zeros(1, 1, length, 3, dtype=torch.float64)
    try:
        bicubic_core.resize_1d(x, -2, size=math.ceil(length * scale), scale=scale)
    except IndexError:
        return False
    return True


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 2, 3, 4])
def test_resizable_is_exactly_what_the_backend_accepts(scale):
    for length in range(1, 41):
        assert resizable(length, scale) == _backend_resizes(length, scale), length


def test_smallest_sizes_match_matlab(photos_uint8):
    """At the smallest sizes the x4 protocol resizes (HR 8 down, LR 3 up) the result is still MATLAB's."""
    assert (min_resizable(1 / 4, 4), min_resizable(4.0)) == (8, 3)
    for img, factor in (
        (photos_uint8["rocket"][200:208, 300:308], 1 / 4),
        (photos_uint8["coffee"][50:53, 9:12], 4),
    ):
        x = torch.from_numpy(img.copy()).permute(2, 0, 1).double() / 255
        out = imresize(x, factor).permute(1, 2, 0).numpy() * 255
        np.testing.assert_allclose(out, ref.matlab_imresize(img, factor), atol=1e-9)


@pytest.mark.parametrize(
    ("shape", "scale", "message"),
    [
        ((3, 2, 2), 4, "a 2x2 image is too small to resize by 4 with MATLAB bicubic: its height of 2 pixels"),
        ((3, 40, 4), 0.25, "a 40x4 image is too small to resize by 0.25 with MATLAB bicubic: its width of 4"),
    ],
)
def test_too_small_image_is_a_clear_error(shape, scale, message):
    with pytest.raises(
        ValueError, match=re.escape(message) + ".* sides of (3|10) pixels or more always work"
    ):
        imresize(torch.rand(shape), scale)
    with pytest.raises(ValueError, match=re.escape(message)):
        imresize_uint8(torch.zeros(shape, dtype=torch.uint8), scale)
