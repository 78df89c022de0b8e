"""MATLAB-compatible bicubic resize (antialiased, a = -0.5, symmetric borders).

The per-dimension kernels come from the ``bicubic-pytorch`` package (a port of MATLAB's ``imresize``); the
passes are run here in float64, because the package's own entry point always computes in float32, which
flips a few pixels that sit next to a rounding tie.
"""

from __future__ import annotations

import functools
import math

import torch
from bicubic_pytorch import core as _core

# Sides up to this many pixels are scanned to find the smallest size from which every size resizes.
_SCAN_LIMIT = 64


def _check(x: torch.Tensor, scale: float) -> None:
    if not torch.is_tensor(x):
        raise ValueError(f"imresize expects a tensor, got {type(x).__name__}")
    if x.dim() not in (3, 4):
        raise ValueError(f"imresize expects (C, H, W) or (B, C, H, W), got shape {tuple(x.shape)}")
    if not scale > 0:
        raise ValueError(f"imresize scale must be positive, got {scale}")


@functools.lru_cache(maxsize=4096)
def resizable(length: int, scale: float) -> bool:
    """Whether one side of ``length`` pixels can be resized by ``scale`` (MATLAB bicubic, antialiased).

    MATLAB mirrors an image as often as its kernel needs; the ``bicubic-pytorch`` backend mirrors it once,
    so the border padding it takes (the kernel support plus one pixel of margin on each side) must not
    exceed the side itself. When it fits, one mirror is all MATLAB uses too and the result equals MATLAB's.
    The padding is computed exactly as the backend computes it (``resize_1d`` / ``get_padding``).

    Args:
        length: input side in pixels.
        scale: resize factor (``1 / 4`` downscales by 4).

    Returns:
        True when the backend can resize the side.
    """
    if length < 1:
        return False
    size = math.ceil(length * scale)
    kernel_size = 4 if scale >= 1 else math.ceil(4 / scale)
    kernel_size += 2
    pos = torch.linspace(0, size - 1, steps=size, dtype=torch.float64)
    base = (((pos + 0.5) / scale - 0.5).floor() - (kernel_size // 2) + 1).long()
    pad_pre = max(0, -int(base.min()))
    pad_post = max(0, int(base.max()) + kernel_size - length)
    return pad_pre <= length and pad_post <= length


@functools.lru_cache(maxsize=64)
def min_resizable(scale: float, step: int = 1) -> int:
    """The smallest side (a multiple of ``step``) from which every larger multiple resizes by ``scale``.

    Args:
        scale: resize factor.
        step: only sides that are multiples of ``step`` are considered (e.g. HR sides cropped to the scale).

    Returns:
        The minimum side in pixels.
    """
    sides = range(step, _SCAN_LIMIT * step + 1, step)
    failing = [n for n in sides if not resizable(n, scale)]
    return failing[-1] + step if failing else step


def _check_size(h: int, w: int, scale: float) -> None:
    for label, length in (("height", h), ("width", w)):
        if not resizable(length, scale):
            raise ValueError(
                f"a {h}x{w} image is too small to resize by {scale:g} with MATLAB bicubic: its {label} of "
                f"{length} pixels is narrower than the border padding the kernel needs; sides of "
                f"{min_resizable(scale)} pixels or more always work"
            )


def _resize(x: torch.Tensor, scale: float, round_between: bool) -> torch.Tensor:
    """Height pass then width pass (MATLAB's order for equal factors) in float64 on (N, 1, H, W)."""
    shape = x.shape
    h, w = shape[-2:]
    _check_size(h, w, scale)
    y = x.reshape(-1, 1, h, w).to(torch.float64)
    size = (math.ceil(h * scale), math.ceil(w * scale))
    kw = {"kernel": "cubic", "padding_type": "reflect", "antialiasing": True}
    y = _core.resize_1d(y, -2, size=size[0], scale=scale, **kw)
    if round_between:
        y = _round_uint8(y)
    y = _core.resize_1d(y, -1, size=size[1], scale=scale, **kw)
    return y.reshape(*shape[:-2], *size)


def _round_uint8(y: torch.Tensor) -> torch.Tensor:
    # MATLAB rounds half away from zero and saturates to [0, 255].
    return torch.floor(y.clamp(0, 255) + 0.5)


def imresize(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Resize a float image like MATLAB ``imresize(x, scale, 'bicubic')`` on a double image.

    Downscaling is antialiased exactly as MATLAB does it (the cubic kernel is widened by ``1 / scale``)
    and borders are handled by symmetric (half-sample) reflection. The output size is
    ``ceil(H * scale) x ceil(W * scale)``.

    Args:
        x: (C, H, W) or (B, C, H, W) float tensor, any range (no clamping or rounding is applied).
        scale: resize factor, e.g. ``1 / 4`` to make a x4 LR image or ``4`` for bicubic upscaling.

    Returns:
        The resized tensor with the same number of dimensions and dtype as ``x``.
    """
    _check(x, scale)
    if not x.is_floating_point():
        raise ValueError(f"imresize expects a float tensor, got {type(x).__name__} {x.dtype}")
    return _resize(x, scale, round_between=False).to(x.dtype)


def imresize_uint8(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Resize a uint8 image like MATLAB ``imresize`` on a uint8 image (how DIV2K's LR images were made).

    MATLAB keeps the input class between its one-dimensional passes, so a uint8 image is rounded and
    saturated after the height pass and again after the width pass. This differs from
    ``round(imresize(x / 255))`` on 10-15 % of LR pixels (by up to a few levels near saturated edges).

    Args:
        x: (C, H, W) or (B, C, H, W) uint8 tensor.
        scale: resize factor, e.g. ``1 / 4``.

    Returns:
        The resized uint8 tensor.
    """
    _check(x, scale)
    if x.dtype != torch.uint8:
        raise ValueError(f"imresize_uint8 expects a uint8 tensor, got {x.dtype}")
    return _round_uint8(_resize(x, scale, round_between=True)).to(torch.uint8)
