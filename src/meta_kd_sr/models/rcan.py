"""RCAN (Zhang et al., 2018): residual groups of residual channel-attention blocks (RCAB)."""

from __future__ import annotations

from collections.abc import Sequence

from .blocks import DIV2K_RGB_MEAN, ResidualGroup, SRNet


class RCAN(SRNet):
    """Residual channel attention network for single-image super-resolution.

    ``conv_first -> n_groups ResidualGroups (n_blocks RCABs + conv, short skip) -> conv_after_body
    -> + long skip -> upsample -> conv_last``.

    Sizes used in this project, all presets of this one class:

    - teacher: ``n_groups=10, n_blocks=20, n_feats=64, reduction=16`` (15,592,355 parameters at x4; the
      commonly quoted 15,592,379 also counts the official code's two frozen 1x1 MeanShift convs);
    - student: ``n_groups=10, n_blocks=6`` (5.2 M at x4);
    - tiny (tests, CPU demo): e.g. ``n_groups=3, n_blocks=2, n_feats=16, reduction=4``.

    Distilled features (``forward(lq, return_feats=True)``): ``f1``/``f2`` are the outputs of residual
    groups ``third_points(n_groups)`` (1-based; 10 -> groups 3 and 7 as in FAKD, 3 -> 1 and 2), ``f3`` the
    output of ``conv_after_body`` before the long skip. All are (B, n_feats, h, w).

    Note: the official RCAN code ignores ``res_scale`` inside RCAB (BasicSR applies it); with the
    default 1.0 both agree.

    Args:
        scale: upscaling factor, 3 or a power of two.
        n_feats: channels of the body.
        n_groups: number of residual groups.
        n_blocks: RCABs per residual group.
        reduction: channel reduction inside the channel attention (``n_feats // reduction`` >= 1).
        res_scale: residual scaling inside each RCAB.
        img_range: ``lq`` in [0, 1] is shifted by ``rgb_mean`` and multiplied by this before the network.
        rgb_mean: RGB mean subtracted from ``lq`` (DIV2K's by default).

    """

    def __init__(
        self,
        scale: int = 4,
        n_feats: int = 64,
        n_groups: int = 10,
        n_blocks: int = 20,
        reduction: int = 16,
        res_scale: float = 1.0,
        img_range: float = 255.0,
        rgb_mean: Sequence[float] = DIV2K_RGB_MEAN,
    ) -> None:
        super().__init__(scale, n_feats, n_groups, img_range, rgb_mean)
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
        self.body.extend(ResidualGroup(n_feats, n_blocks, reduction, res_scale) for _ in range(n_groups))
