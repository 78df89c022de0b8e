"""Reference port of MATLAB ``imresize(A, scale, 'bicubic')`` in float64 numpy, used only by tests.

Written from MATLAB's ``imresize.m`` (``contributions``, ``cubic``, ``resizeAlongDim``) and independent of
the library: weights are computed per output pixel in 1-based MATLAB coordinates, out-of-range indices are
mirrored with ``aux = [1:in_length, in_length:-1:1]``, all-zero weight columns are dropped, and the two
dimensions are processed in MATLAB's order (``sort(scale)``: the smaller scale first, height first on ties).

MATLAB's ``imresizemex`` returns the class of its input, so a uint8 image is rounded (half away from zero)
and saturated after *each* one-dimensional pass; ``matlab_imresize_uint8`` reproduces that, while
``matlab_imresize`` is the double-precision path (no intermediate rounding).
"""

from __future__ import annotations

import math

import numpy as np


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic kernel with a = -0.5, as in MATLAB's ``imresize``."""
    absx = np.abs(x)
    absx2 = absx**2
    absx3 = absx**3
    inner = (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
    outer = (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((absx > 1) & (absx <= 2))
    return inner + outer


def contributions(in_length: int, out_length: int, scale: float, antialiasing: bool = True):
    """Weights (out_length, P) and 0-based source indices (out_length, P) of one dimension."""
    kernel_width = 4.0
    if scale < 1 and antialiasing:

        def h(x):
            return scale * cubic(scale * x)

        kernel_width = kernel_width / scale
    else:
        h = cubic
    x = np.arange(1, out_length + 1, dtype=np.float64)[:, None]
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    indices = left + np.arange(taps, dtype=np.float64)[None, :]
    weights = h(u - indices)
    weights = weights / weights.sum(axis=1, keepdims=True)
    aux = np.concatenate([np.arange(1, in_length + 1), np.arange(in_length, 0, -1)])
    indices = aux[np.mod(indices.astype(np.int64) - 1, aux.size)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], indices[:, keep] - 1


def _resize_along(img: np.ndarray, axis: int, weights: np.ndarray, indices: np.ndarray) -> np.ndarray:
    moved = np.moveaxis(img.astype(np.float64), axis, 0)
    out = np.zeros((weights.shape[0],) + moved.shape[1:], dtype=np.float64)
    for k in range(weights.shape[1]):
        w = weights[:, k].reshape((-1,) + (1,) * (moved.ndim - 1))
        out += w * moved[indices[:, k]]
    return np.moveaxis(out, 0, axis)


def _round_uint8(x: np.ndarray) -> np.ndarray:
    return np.floor(np.clip(x, 0, 255) + 0.5).astype(np.uint8)


def _resize(img: np.ndarray, scale: float, per_pass) -> np.ndarray:
    if img.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (H, W, C), got {img.shape}")
    scales = (float(scale), float(scale))
    out_size = [math.ceil(scales[d] * img.shape[d]) for d in range(2)]
    order = np.argsort(np.asarray(scales), kind="stable")
    out = img
    for dim in order:
        weights, indices = contributions(img.shape[dim], out_size[dim], scales[dim])
        out = per_pass(_resize_along(out, int(dim), weights, indices))
    return out


def matlab_imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """Double-precision ``imresize(img, scale, 'bicubic')``: img (H, W[, C]) float, any range."""
    return _resize(np.asarray(img, dtype=np.float64), scale, lambda x: x)


def matlab_imresize_uint8(img: np.ndarray, scale: float) -> np.ndarray:
    """``imresize`` of a uint8 image: rounded and saturated after each one-dimensional pass."""
    if img.dtype != np.uint8:
        raise ValueError(f"expected uint8, got {img.dtype}")
    return _resize(img, scale, _round_uint8)
