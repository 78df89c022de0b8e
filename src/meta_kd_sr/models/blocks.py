"""Building blocks shared by the SR networks (EDSR, RCAN) and their common skeleton.

Submodule names follow BasicSR where it has plain names (``conv_first``, ``body``, ``conv_after_body``,
``upsample``, ``conv_last``, ``conv1``/``conv2``), so the checkpoint converters stay small.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
FEATURE_NAMES = ("f1", "f2", "f3")


def conv(in_ch: int, out_ch: int, kernel_size: int = 3) -> nn.Conv2d:
    """Make a stride-1 convolution with bias and 'same' padding (odd ``kernel_size``)."""
    if kernel_size % 2 != 1:
        raise ValueError(f"'same' padding needs an odd kernel_size, got {kernel_size}")
    return nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)


def third_points(n: int) -> tuple[int, int]:
    """1-based indices of the units whose outputs are distilled as ``f1`` and ``f2``.

    ``f1`` follows unit ``round(n / 3)`` and ``f2`` unit ``round(2 n / 3)``, kept within ``[1, n]`` and
    with ``f2`` after ``f1`` whenever ``n >= 2`` (``n / 3`` is never a tie, so rounding is unambiguous).
    Examples: 10 -> (3, 7) (FAKD's RCAN groups 3 and 7), 32 -> (11, 21), 16 -> (5, 11), 6 -> (2, 4),
    4 -> (1, 3), 3 -> (1, 2), 2 -> (1, 2), 1 -> (1, 1).

    Args:
        n: number of body units (residual blocks for EDSR, residual groups for RCAN), ``n >= 1``.

    Returns:
        ``(i1, i2)`` with ``1 <= i1 <= i2 <= n``.

    """
    if n < 1:
        raise ValueError(f"need at least one body unit, got n={n}")
    i1 = max(1, round(n / 3))
    i2 = min(n, max(i1 + 1, round(2 * n / 3)))
    return i1, i2


def accepts_features_only(net: nn.Module) -> bool:
    """Whether ``net.forward`` takes ``features_only=True`` (features without the upsampler, as SRNet)."""
    try:
        return "features_only" in inspect.signature(net.forward).parameters
    except (TypeError, ValueError):
        return False


class ResBlock(nn.Module):
    """EDSR residual block without batch norm: ``x + res_scale * conv2(relu(conv1(x)))``."""

    def __init__(self, n_feats: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.conv1 = conv(n_feats, n_feats)
        self.conv2 = conv(n_feats, n_feats)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        return x + self.res_scale * self.conv2(torch.relu(self.conv1(x)))


class ChannelAttention(nn.Module):
    """RCAN channel attention: ``x * sigmoid(up(relu(down(avgpool(x)))))`` with 1x1 convs."""

    def __init__(self, n_feats: int, reduction: int = 16) -> None:
        super().__init__()
        if n_feats // reduction < 1:
            raise ValueError(f"reduction {reduction} leaves no channels from n_feats={n_feats}")
        self.down = nn.Conv2d(n_feats, n_feats // reduction, 1)
        self.up = nn.Conv2d(n_feats // reduction, n_feats, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        w = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.up(torch.relu(self.down(w))))


class RCAB(nn.Module):
    """Residual channel attention block: ``x + res_scale * attention(conv2(relu(conv1(x))))``."""

    def __init__(self, n_feats: int, reduction: int = 16, res_scale: float = 1.0) -> None:
        super().__init__()
        self.conv1 = conv(n_feats, n_feats)
        self.conv2 = conv(n_feats, n_feats)
        self.attention = ChannelAttention(n_feats, reduction)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        return x + self.res_scale * self.attention(self.conv2(torch.relu(self.conv1(x))))


class ResidualGroup(nn.Module):
    """RCAN residual group: ``x + conv(RCAB_n(... RCAB_1(x)))``."""

    def __init__(self, n_feats: int, n_blocks: int, reduction: int = 16, res_scale: float = 1.0) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(RCAB(n_feats, reduction, res_scale) for _ in range(n_blocks)))
        self.conv = conv(n_feats, n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        return x + self.conv(self.blocks(x))


class Upsampler(nn.Sequential):
    """Sub-pixel upsampler: (conv to ``r^2 C`` channels, PixelShuffle(r)) stages, no activation.

    Scale 3 is one x3 stage; a power of two ``2^k`` is ``k`` x2 stages (x4 = two x2 stages), as in
    EDSR-PyTorch and BasicSR, so their checkpoints fit (convs at indices 0, 2, ...).
    """

    def __init__(self, scale: int, n_feats: int) -> None:
        if scale == 3:
            stages = [3]
        elif scale >= 2 and scale & (scale - 1) == 0:
            stages = [2] * (scale.bit_length() - 1)
        else:
            raise ValueError(f"unsupported scale {scale}: use 3 or a power of two (2, 4, 8)")
        layers: list[nn.Module] = []
        for r in stages:
            layers += [conv(n_feats, r * r * n_feats), nn.PixelShuffle(r)]
        super().__init__(*layers)


class SRNet(nn.Module):
    """Skeleton shared by EDSR and RCAN; subclasses fill ``self.body`` with their units.

    ``conv_first -> body units -> conv_after_body -> + long skip -> upsample -> conv_last``, with the
    BasicSR mean shift around it: ``x = (lq - mean) * img_range`` and ``sr = out / img_range + mean``.
    ``mean`` is a non-persistent buffer: it is a constructor argument (like ``img_range``), and official
    checkpoints do not store it in this form.

    Attributes:
        scale: upscaling factor.
        n_feats: channels of the body and of every returned feature.
        img_range: multiplier applied after the mean shift.
        taps: 0-based indices into ``body`` of the units whose outputs are ``f1`` and ``f2``.
        feature_names: ``("f1", "f2", "f3")``, the keys of the features ``forward`` returns.
    """

    mean: torch.Tensor  # the RGB mean buffer, (1, 3, 1, 1)

    feature_names = FEATURE_NAMES

    def __init__(
        self, scale: int, n_feats: int, n_units: int, img_range: float, rgb_mean: Sequence[float]
    ) -> None:
        super().__init__()
        if n_feats < 1 or n_units < 1:
            raise ValueError(f"n_feats and the body depth must be >= 1, got {n_feats} and {n_units}")
        if not img_range > 0:
            raise ValueError(f"img_range must be positive, got {img_range}")
        if len(rgb_mean) != 3:
            raise ValueError(f"rgb_mean needs 3 values (R, G, B), got {tuple(rgb_mean)}")
        self.scale = int(scale)
        self.n_feats = n_feats
        self.img_range = float(img_range)
        self.register_buffer("mean", torch.tensor(rgb_mean, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.conv_first = conv(3, n_feats)
        self.body = nn.Sequential()
        self.conv_after_body = conv(n_feats, n_feats)
        self.upsample = Upsampler(scale, n_feats)
        self.conv_last = conv(n_feats, 3)
        self.taps = tuple(i - 1 for i in third_points(n_units))  # 0-based body indices of f1, f2

    @property
    def feature_channels(self) -> dict[str, int]:
        """Channels of each returned feature, ``{"f1": n_feats, "f2": n_feats, "f3": n_feats}``."""
        return dict.fromkeys(self.feature_names, self.n_feats)

    def forward(
        self, lq: torch.Tensor, return_feats: bool = False, features_only: bool = False
    ) -> torch.Tensor | dict[str, torch.Tensor] | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Super-resolve ``lq``; optionally return the three distilled features.

        Args:
            lq: (B, 3, h, w) float in [0, 1].
            return_feats: also return ``{"f1", "f2", "f3"}``, each (B, n_feats, h, w): the outputs of the
                body units at ``third_points(n)`` and of ``conv_after_body`` (before the long skip).
            features_only: return the features alone and skip the upsampler and ``conv_last`` (at x4 more
                than half of the network's cost). Used for a teacher whose SR output no loss reads, and by
                the meta step's forward-mode pass.

        Returns:
            ``sr`` (B, 3, h * scale, w * scale), not clamped; ``(sr, feats)`` if ``return_feats``; ``feats``
            if ``features_only``.

        """
        if lq.dim() != 4 or lq.shape[1] != 3 or not lq.is_floating_point():
            raise ValueError(f"lq must be a float (B, 3, h, w) tensor, got {lq.dtype} {tuple(lq.shape)}")
        mean = self.mean.to(lq.dtype)
        x = self.conv_first((lq - mean) * self.img_range)
        h, feats = x, {}
        return_feats = return_feats or features_only
        for i, unit in enumerate(self.body):
            h = unit(h)
            if return_feats:
                if i == self.taps[0]:
                    feats["f1"] = h
                if i == self.taps[1]:
                    feats["f2"] = h
        res = self.conv_after_body(h)
        if features_only:
            feats["f3"] = res
            return feats
        sr = self.conv_last(self.upsample(res + x)) / self.img_range + mean
        if not return_feats:
            return sr
        feats["f3"] = res
        return sr, feats
