"""EDSR (Lim et al., 2017): residual blocks without batch norm, a long skip and a sub-pixel upsampler."""

from __future__ import annotations

from collections.abc import Sequence

from .blocks import DIV2K_RGB_MEAN, ResBlock, SRNet


class EDSR(SRNet):
    """Enhanced deep residual network for single-image super-resolution.

    ``conv_first -> n_blocks ResBlocks -> conv_after_body -> + long skip -> upsample -> conv_last``.

    Sizes used in this project, all presets of this one class:

    - teacher (EDSR): ``n_blocks=32, n_feats=256, res_scale=0.1`` (43.1 M parameters at x4);
    - student (EDSR-baseline): ``n_blocks=16, n_feats=64, res_scale=1`` (1,517,571 parameters at x4,
      i.e. EDSR-PyTorch's model without its two frozen 1x1 MeanShift convs);
    - tiny (tests, CPU demo): e.g. ``n_blocks=2..4, n_feats=8..32``.

    Distilled features (``forward(lq, return_feats=True)``): ``f1``/``f2`` are the outputs of blocks
    ``third_points(n_blocks)`` (1-based; 32 -> 11 and 21, 16 -> 5 and 11), ``f3`` the output of
    ``conv_after_body`` before the long skip. All are (B, n_feats, h, w).

    Args:
        scale: upscaling factor, 3 or a power of two.
        n_feats: channels of the body.
        n_blocks: number of residual blocks.
        res_scale: residual scaling inside each block.
        img_range: ``lq`` in [0, 1] is shifted by ``rgb_mean`` and multiplied by this before the network.
        rgb_mean: RGB mean subtracted from ``lq`` (DIV2K's by default).

    """

    def __init__(
        self,
        scale: int = 4,
        n_feats: int = 64,
        n_blocks: int = 16,
        res_scale: float = 1.0,
        img_range: float = 255.0,
        rgb_mean: Sequence[float] = DIV2K_RGB_MEAN,
    ) -> None:
        super().__init__(scale, n_feats, n_blocks, img_range, rgb_mean)
        self.body.extend(ResBlock(n_feats, res_scale) for _ in range(n_blocks))
