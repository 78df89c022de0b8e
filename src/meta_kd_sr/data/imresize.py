"""MATLAB-compatible bicubic resize (antialiased, a = -0.5, symmetric borders)."""

from __future__ import annotations

import torch
from bicubic_pytorch import core as _core


def imresize(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Resize like MATLAB ``imresize(x, scale, 'bicubic')``.

    Downscaling is antialiased exactly as MATLAB does it (the cubic kernel is widened by ``1 / scale``)
    and borders are handled by symmetric (half-sample) reflection. The output size is
    ``ceil(H * scale) x ceil(W * scale)``.

    Args:
        x: (C, H, W) or (B, C, H, W) float tensor, any range (no clamping or rounding is applied).
        scale: resize factor, e.g. ``1 / 4`` to make a x4 LR image or ``4`` for bicubic upscaling.

    Returns:
        The resized tensor with the same number of dimensions and dtype as ``x``.
    """
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(f"imresize expects a float tensor, got {type(x).__name__} {getattr(x, 'dtype', '')}")
    if x.dim() not in (3, 4):
        raise ValueError(f"imresize expects (C, H, W) or (B, C, H, W), got shape {tuple(x.shape)}")
    if not scale > 0:
        raise ValueError(f"imresize scale must be positive, got {scale}")
    return _core.imresize(x, scale=scale, antialiasing=True, padding_type="reflect")
