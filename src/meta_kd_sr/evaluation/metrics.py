"""The SR evaluation protocol: Y channel, border crop, uint8 quantisation, per-image PSNR and SSIM.

The protocol is the one of the SR literature (EDSR, RCAN, BasicSR's ``calculate_psnr``/``calculate_ssim``
with ``test_y_channel=True``): SR and GT are quantised to uint8 levels, converted to the Y channel of
MATLAB's ``rgb2ycbcr`` (values in [16, 235], not rounded), ``crop_border`` pixels are removed on each side,
and PSNR (peak 255) and SSIM (11x11 Gaussian window, sigma 1.5, 'valid' positions only, K1 = 0.01,
K2 = 0.03, L = 255) are computed per image and then averaged over images.

All arithmetic after quantisation runs in float64, so the values do not depend on the input precision.
Identical images have an infinite PSNR (``inf``), and so has any mean that includes one.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric, MetricCollection

# MATLAB rgb2ycbcr, RGB in [0, 1]: Y = 16 + 65.481 R + 128.553 G + 24.966 B (= 16 + 219 * BT.601 luma).
_Y_OFFSET = 16.0
_Y_WEIGHTS = (65.481, 128.553, 24.966)
PEAK = 255.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def rgb_to_y(x: Tensor) -> Tensor:
    """Y channel of MATLAB's ``rgb2ycbcr`` (ITU-R BT.601, studio range), not rounded.

    Args:
        x: (B, 3, H, W) or (3, H, W) RGB in [0, 1].

    Returns:
        (B, 1, H, W) or (1, H, W) Y in [16, 235] for inputs in [0, 1].
    """
    if x.dim() < 3 or x.shape[-3] != 3:
        raise ValueError(f"rgb_to_y expects (B, 3, H, W) or (3, H, W) RGB, got shape {tuple(x.shape)}")
    red, green, blue = x[..., 0:1, :, :], x[..., 1:2, :, :], x[..., 2:3, :, :]
    return _Y_OFFSET + _Y_WEIGHTS[0] * red + _Y_WEIGHTS[1] * green + _Y_WEIGHTS[2] * blue


def quantize(x: Tensor) -> Tensor:
    """Snap to uint8 levels, as when an SR image is saved to PNG: clamp to [0, 1], x255, round, /255.

    Args:
        x: float tensor of any shape in [0, 1] (values outside are clamped).

    Returns:
        Tensor of the same shape and dtype whose values are k / 255 for integer k in [0, 255].
    """
    if not x.is_floating_point():
        raise ValueError(f"quantize expects a float tensor in [0, 1], got {x.dtype}")
    return x.clamp(0.0, 1.0).mul(PEAK).round().div(PEAK)


def _check_crop_border(crop_border: int) -> None:
    if isinstance(crop_border, bool) or not isinstance(crop_border, int) or crop_border < 0:
        raise ValueError(f"crop_border must be a non-negative int, got {crop_border!r}")


def _check_pair(name: str, sr: Tensor, gt: Tensor, crop_border: int, min_size: int) -> None:
    if not (torch.is_tensor(sr) and torch.is_tensor(gt)):
        raise ValueError(f"{name} expects tensors, got {type(sr).__name__} and {type(gt).__name__}")
    if not (sr.is_floating_point() and gt.is_floating_point()):
        raise ValueError(f"{name} expects float tensors in [0, 1], got sr {sr.dtype} and gt {gt.dtype}")
    if sr.shape != gt.shape:
        shapes = f"{tuple(sr.shape)} and {tuple(gt.shape)}"
        raise ValueError(f"{name} expects sr and gt of the same shape, got {shapes}")
    if sr.dim() not in (3, 4) or sr.shape[-3] != 3:
        raise ValueError(f"{name} expects (B, 3, H, W) or (3, H, W) RGB images, got shape {tuple(sr.shape)}")
    _check_crop_border(crop_border)
    height, width = sr.shape[-2:]
    if min(height, width) - 2 * crop_border < min_size:
        raise ValueError(
            f"{name} needs at least {min_size}x{min_size} pixels left after removing "
            f"crop_border={crop_border} on each side, got {height}x{width} images"
        )


def _y_pair(sr: Tensor, gt: Tensor, crop_border: int) -> tuple[Tensor, Tensor]:
    """Quantised, cropped float64 Y of both images: (B, 1, H - 2c, W - 2c) in [16, 235]."""
    sr_y = rgb_to_y(quantize(sr.detach().to(torch.float64)))
    gt_y = rgb_to_y(quantize(gt.detach().to(torch.float64)))
    if crop_border > 0:
        sr_y = sr_y[..., crop_border:-crop_border, crop_border:-crop_border]
        gt_y = gt_y[..., crop_border:-crop_border, crop_border:-crop_border]
    return sr_y, gt_y


def psnr_y(sr: Tensor, gt: Tensor, crop_border: int) -> Tensor:
    """Per-image PSNR on the Y channel with the SR protocol (peak 255, SR and GT on uint8 levels).

    Args:
        sr: (B, 3, H, W) or (3, H, W) float RGB in [0, 1].
        gt: same shape as ``sr``, float RGB in [0, 1] (normally already on uint8 levels).
        crop_border: pixels removed on each side before the metric (the scale factor by convention);
            0 keeps all.

    Returns:
        (B,) float64 PSNR in dB per image (a 0-d tensor for a single image); ``inf`` where sr equals gt.
    """
    _check_pair("psnr_y", sr, gt, crop_border, min_size=1)
    batched = sr.dim() == 4
    sr_y, gt_y = _y_pair(sr if batched else sr[None], gt if batched else gt[None], crop_border)
    mse = (sr_y - gt_y).square().mean(dim=(1, 2, 3))
    psnr = 10.0 * torch.log10(PEAK**2 / mse)
    return psnr if batched else psnr[0]


def _gaussian_1d(dtype: torch.dtype, device: torch.device) -> Tensor:
    """(SSIM_WINDOW,) normalised Gaussian taps, sigma SSIM_SIGMA."""
    half = (SSIM_WINDOW - 1) / 2
    pos = torch.arange(SSIM_WINDOW, dtype=dtype, device=device) - half
    taps = torch.exp(-pos.square() / (2 * SSIM_SIGMA**2))
    return taps / taps.sum()


def _ssim_map(x: Tensor, y: Tensor) -> Tensor:
    """SSIM map over 'valid' window positions: x, y (B, 1, h, w) -> (B, 1, h - 10, w - 10)."""
    taps = _gaussian_1d(x.dtype, x.device)
    stats = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    stats = F.conv2d(stats, taps.view(1, 1, -1, 1).expand(5, 1, -1, 1), groups=5)
    stats = F.conv2d(stats, taps.view(1, 1, 1, -1).expand(5, 1, 1, -1), groups=5)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.split(1, dim=1)
    var_x, var_y, cov = e_xx - mu_x.square(), e_yy - mu_y.square(), e_xy - mu_x * mu_y
    c1, c2 = (SSIM_K1 * PEAK) ** 2, (SSIM_K2 * PEAK) ** 2
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    return numerator / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))


def ssim_y(sr: Tensor, gt: Tensor, crop_border: int) -> Tensor:
    """Per-image SSIM on the Y channel (MATLAB / BasicSR ``calculate_ssim``: Gaussian 11x11, 'valid').

    Args:
        sr: (B, 3, H, W) or (3, H, W) float RGB in [0, 1].
        gt: same shape as ``sr``, float RGB in [0, 1].
        crop_border: pixels removed on each side before the metric; 0 keeps all. At least 11x11 pixels
            must remain.

    Returns:
        (B,) float64 SSIM per image (a 0-d tensor for a single image), the mean of the SSIM map.
    """
    _check_pair("ssim_y", sr, gt, crop_border, min_size=SSIM_WINDOW)
    batched = sr.dim() == 4
    sr_y, gt_y = _y_pair(sr if batched else sr[None], gt if batched else gt[None], crop_border)
    ssim = _ssim_map(sr_y, gt_y).mean(dim=(1, 2, 3))
    return ssim if batched else ssim[0]


class _PerImageMean(Metric):
    """Mean over images of a per-image metric; sum and count states are summed across processes."""

    # Not torchmetrics' MeanMetric: it casts every value to the metric's dtype before summing, and a
    # `.to(device)` (Lightning moves every module) resets that dtype to float32 even after
    # `set_dtype(torch.float64)`: a mean of PSNRs moved by 2e-6 dB (SSIM 5e-8). Its default nan_strategy
    # also drops NaN images from the mean, where a NaN here must show. Keeping both would mean overriding
    # its internals.
    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    total: Tensor
    count: Tensor

    def __init__(self, crop_border: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_crop_border(crop_border)
        self.crop_border = crop_border
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @staticmethod
    def _per_image(sr: Tensor, gt: Tensor, crop_border: int) -> Tensor:
        raise NotImplementedError

    def update(self, sr: Tensor, gt: Tensor) -> None:
        """Add the per-image values of a batch: sr, gt (B, 3, H, W) or (3, H, W) in [0, 1]."""
        values = self._per_image(sr, gt, self.crop_border)
        self.total += values.sum()
        self.count += values.numel()

    def compute(self) -> Tensor:
        """Mean of the per-image values seen so far (0-d float64; NaN before any update)."""
        return self.total / self.count


class PSNRY(_PerImageMean):
    """Mean over images of :func:`psnr_y` (the per-image protocol, not a PSNR of the pooled MSE).

    Args:
        crop_border: pixels removed on each side (the scale factor by convention).
        **kwargs: passed to :class:`torchmetrics.Metric`.
    """

    _per_image = staticmethod(psnr_y)


class SSIMY(_PerImageMean):
    """Mean over images of :func:`ssim_y`.

    Args:
        crop_border: pixels removed on each side (the scale factor by convention).
        **kwargs: passed to :class:`torchmetrics.Metric`.
    """

    _per_image = staticmethod(ssim_y)


def sr_metrics(crop_border: int, prefix: str = "") -> MetricCollection:
    """PSNR-Y and SSIM-Y of the protocol as one collection, keys ``{prefix}psnr_y`` and ``{prefix}ssim_y``.

    Args:
        crop_border: pixels removed on each side (the scale factor by convention).
        prefix: key prefix, e.g. ``"val/"``.

    Returns:
        A :class:`torchmetrics.MetricCollection` updated with ``(sr, gt)``.
    """
    metrics = {"psnr_y": PSNRY(crop_border), "ssim_y": SSIMY(crop_border)}
    # Both metrics have states named total/count: never let the collection merge them into one group.
    return MetricCollection(metrics, prefix=prefix, compute_groups=False)
