"""Reference copies of the public EDSR/RCAN implementations, used only by tests as oracles.

Re-typed from EDSR-PyTorch (``src/model/common.py``, ``edsr.py``, ``rcan.py``; RCAN's official code is the
same) and BasicSR (``basicsr/archs/edsr_arch.py``, ``rcan_arch.py``, ``arch_util.py``), keeping their module
nesting so that ``state_dict()`` has exactly their key names. Official models take inputs in
``[0, rgb_range]`` and shift them with frozen 1x1 ``MeanShift`` convs; BasicSR models take ``[0, 1]``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


# ---------------------------------------------------------------- EDSR-PyTorch / official RCAN
def default_conv(in_channels, out_channels, kernel_size, bias=True):
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


class MeanShift(nn.Conv2d):
    def __init__(self, rgb_range, rgb_mean=DIV2K_MEAN, rgb_std=(1.0, 1.0, 1.0), sign=-1):
        super().__init__(3, 3, kernel_size=1)
        std = torch.Tensor(rgb_std)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1) / std.view(3, 1, 1, 1)
        self.bias.data = sign * rgb_range * torch.Tensor(rgb_mean) / std
        for p in self.parameters():
            p.requires_grad = False


class OfficialResBlock(nn.Module):
    def __init__(self, conv, n_feats, kernel_size, act, res_scale=1):
        super().__init__()
        self.body = nn.Sequential(
            conv(n_feats, n_feats, kernel_size), act, conv(n_feats, n_feats, kernel_size)
        )
        self.res_scale = res_scale

    def forward(self, x):
        res = self.body(x).mul(self.res_scale)
        res += x
        return res


class OfficialUpsampler(nn.Sequential):
    def __init__(self, conv, scale, n_feats):
        m = []
        if (scale & (scale - 1)) == 0:
            for _ in range(int(math.log(scale, 2))):
                m.append(conv(n_feats, 4 * n_feats, 3))
                m.append(nn.PixelShuffle(2))
        elif scale == 3:
            m.append(conv(n_feats, 9 * n_feats, 3))
            m.append(nn.PixelShuffle(3))
        else:
            raise NotImplementedError
        super().__init__(*m)


class _OfficialSkeleton(nn.Module):
    def _build(self, body, n_feats, scale, rgb_range, rgb_std):
        conv = default_conv
        self.sub_mean = MeanShift(rgb_range, rgb_std=rgb_std)
        self.add_mean = MeanShift(rgb_range, rgb_std=rgb_std, sign=1)
        self.head = nn.Sequential(conv(3, n_feats, 3))
        self.body = nn.Sequential(*body, conv(n_feats, n_feats, 3))
        self.tail = nn.Sequential(OfficialUpsampler(conv, scale, n_feats), conv(n_feats, 3, 3))

    def forward(self, x):
        x = self.sub_mean(x)
        x = self.head(x)
        res = self.body(x)
        res += x
        x = self.tail(res)
        return self.add_mean(x)


class OfficialEDSR(_OfficialSkeleton):
    def __init__(self, n_resblocks=16, n_feats=64, scale=4, res_scale=1, rgb_range=255, rgb_std=(1, 1, 1)):
        super().__init__()
        act = nn.ReLU(True)
        body = [OfficialResBlock(default_conv, n_feats, 3, act, res_scale) for _ in range(n_resblocks)]
        self._build(body, n_feats, scale, rgb_range, rgb_std)


class CALayer(nn.Module):
    def __init__(self, channel, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channel, channel // reduction, 1, padding=0, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(channel // reduction, channel, 1, padding=0, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.conv_du(self.avg_pool(x))


class OfficialRCAB(nn.Module):
    def __init__(self, conv, n_feat, kernel_size, reduction):
        super().__init__()
        self.body = nn.Sequential(
            conv(n_feat, n_feat, kernel_size),
            nn.ReLU(True),
            conv(n_feat, n_feat, kernel_size),
            CALayer(n_feat, reduction),
        )

    def forward(self, x):
        res = self.body(x)  # the official code ignores res_scale here
        res += x
        return res


class OfficialResidualGroup(nn.Module):
    def __init__(self, conv, n_feat, kernel_size, reduction, n_resblocks):
        super().__init__()
        blocks = [OfficialRCAB(conv, n_feat, kernel_size, reduction) for _ in range(n_resblocks)]
        self.body = nn.Sequential(*blocks, conv(n_feat, n_feat, kernel_size))

    def forward(self, x):
        res = self.body(x)
        res += x
        return res


class OfficialRCAN(_OfficialSkeleton):
    def __init__(self, n_resgroups=10, n_resblocks=20, n_feats=64, reduction=16, scale=4, rgb_range=255):
        super().__init__()
        body = [
            OfficialResidualGroup(default_conv, n_feats, 3, reduction, n_resblocks)
            for _ in range(n_resgroups)
        ]
        self._build(body, n_feats, scale, rgb_range, (1.0, 1.0, 1.0))


# ---------------------------------------------------------------- BasicSR
def upsample(scale, num_feat):
    m = []
    if (scale & (scale - 1)) == 0:
        for _ in range(int(math.log(scale, 2))):
            m += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
    elif scale == 3:
        m += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
    return nn.Sequential(*m)


class ResidualBlockNoBN(nn.Module):
    def __init__(self, num_feat=64, res_scale=1):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=True)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


class ChannelAttention(nn.Module):
    def __init__(self, num_feat, squeeze_factor=16):
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(num_feat, num_feat // squeeze_factor, 1, padding=0),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_feat // squeeze_factor, num_feat, 1, padding=0),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.attention(x)


class BasicRCAB(nn.Module):
    def __init__(self, num_feat, squeeze_factor=16, res_scale=1):
        super().__init__()
        self.res_scale = res_scale
        self.rcab = nn.Sequential(
            nn.Conv2d(num_feat, num_feat, 3, 1, 1),
            nn.ReLU(True),
            nn.Conv2d(num_feat, num_feat, 3, 1, 1),
            ChannelAttention(num_feat, squeeze_factor),
        )

    def forward(self, x):
        return self.rcab(x) * self.res_scale + x


class BasicResidualGroup(nn.Module):
    def __init__(self, num_feat, num_block, squeeze_factor=16, res_scale=1):
        super().__init__()
        self.residual_group = nn.Sequential(
            *(BasicRCAB(num_feat, squeeze_factor, res_scale) for _ in range(num_block))
        )
        self.conv = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

    def forward(self, x):
        return self.conv(self.residual_group(x)) + x


class _BasicSkeleton(nn.Module):
    def _build(self, body, num_feat, upscale, img_range):
        self.img_range = img_range
        self.mean = torch.Tensor(DIV2K_MEAN).view(1, 3, 1, 1)
        self.conv_first = nn.Conv2d(3, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*body)
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = upsample(upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, 3, 3, 1, 1)

    def forward(self, x):
        self.mean = self.mean.type_as(x)
        x = (x - self.mean) * self.img_range
        x = self.conv_first(x)
        res = self.conv_after_body(self.body(x))
        res += x
        x = self.conv_last(self.upsample(res))
        return x / self.img_range + self.mean


class BasicEDSR(_BasicSkeleton):
    def __init__(self, num_feat=64, num_block=16, upscale=4, res_scale=1, img_range=255.0):
        super().__init__()
        self._build(
            [ResidualBlockNoBN(num_feat, res_scale) for _ in range(num_block)], num_feat, upscale, img_range
        )


class BasicRCAN(_BasicSkeleton):
    def __init__(
        self, num_feat=64, num_group=10, num_block=16, squeeze_factor=16, upscale=4, img_range=255.0
    ):
        super().__init__()
        body = [BasicResidualGroup(num_feat, num_block, squeeze_factor) for _ in range(num_group)]
        self._build(body, num_feat, upscale, img_range)
