"""Tiny networks and file helpers shared by the converter and checkpoint tests."""

from __future__ import annotations

import torch

from meta_kd_sr.models import EDSR, RCAN


def tiny_edsr(scale=4, n_blocks=3, n_feats=8, seed=0):
    torch.manual_seed(seed)
    return EDSR(scale=scale, n_feats=n_feats, n_blocks=n_blocks)


def tiny_rcan(scale=4, seed=0):
    torch.manual_seed(seed)
    return RCAN(scale=scale, n_feats=16, n_groups=3, n_blocks=2, reduction=4)


def save(obj, tmp_path, name="ckpt.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def same_output(a, b, lq=None, scale_a=1.0):
    """a(lq * scale_a) / scale_a == b(lq) in float64 (official models work in [0, 255]).

    1e-6: the official MeanShift stores 255 * mean rounded to float32, ours rounds the mean itself.
    """
    lq = (
        torch.rand(2, 3, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        if lq is None
        else lq
    )
    with torch.no_grad():
        return torch.allclose(a.double()(lq * scale_a) / scale_a, b.double()(lq), rtol=0, atol=1e-6)
