"""Reference SR metrics in float64 numpy/scipy, used only by tests (independent of the library).

Follows MATLAB's evaluation scripts (RCAN's ``Evaluate_PSNR_SSIM.m``) and BasicSR's ``calculate_psnr`` /
``calculate_ssim`` with ``test_y_channel=True``: uint8 RGB images -> Y of ``rgb2ycbcr`` in [16, 235]
(unrounded) -> crop ``border`` pixels on each side -> PSNR with peak 255 and Wang et al.'s SSIM with an
11x11 Gaussian (sigma 1.5) evaluated only where the window fits ('valid'), K = (0.01, 0.03), L = 255.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import convolve2d


def y_channel(rgb_uint8: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float64 Y of MATLAB's ``rgb2ycbcr`` applied to ``im2double``."""
    rgb = rgb_uint8.astype(np.float64) / 255.0
    return 16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]


def to_uint8(rgb_float: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] -> uint8, as ``im2uint8`` (round half away from zero, saturate)."""
    return np.floor(np.clip(np.asarray(rgb_float, dtype=np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _crop(img: np.ndarray, border: int) -> np.ndarray:
    return img[border : img.shape[0] - border, border : img.shape[1] - border]


def psnr(sr_uint8: np.ndarray, gt_uint8: np.ndarray, border: int) -> float:
    """PSNR (dB) on Y, both images (H, W, 3) uint8; ``inf`` for identical crops."""
    diff = _crop(y_channel(sr_uint8), border) - _crop(y_channel(gt_uint8), border)
    mse = np.mean(diff**2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """(size, size) normalised Gaussian, as MATLAB's ``fspecial('gaussian', size, sigma)``."""
    half = (size - 1) / 2.0
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    window = np.exp(-(xx**2 + yy**2) / (2.0 * sigma**2))
    return window / window.sum()


def ssim(sr_uint8: np.ndarray, gt_uint8: np.ndarray, border: int) -> float:
    """Mean SSIM on Y over 'valid' window positions, both images (H, W, 3) uint8."""
    x = _crop(y_channel(sr_uint8), border)
    y = _crop(y_channel(gt_uint8), border)
    window = np.rot90(gaussian_window(), 2)  # filter2 is a correlation; the window is symmetric anyway

    def filt(img: np.ndarray) -> np.ndarray:
        return convolve2d(img, window, mode="valid")

    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    mu_x, mu_y = filt(x), filt(y)
    sigma_x = filt(x * x) - mu_x**2
    sigma_y = filt(y * y) - mu_y**2
    sigma_xy = filt(x * y) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)
    denominator = (mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2)
    return float(np.mean(numerator / denominator))
