"""RCAN: feature positions against a hand-run of its weights, parameter counts of the paper-scale presets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from helpers.official_oracle import OfficialRCAN
from meta_kd_sr.models import RCAN

MEAN = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)


def hand_run(m: RCAN, lq: torch.Tensor, n_groups: int, n_blocks: int):
    """RCAN x2 written out with F.conv2d on the named weights: (sr, outputs of every group, body-end conv)."""
    p = dict(m.named_parameters())

    def c(x, name, pad=1):
        return F.conv2d(x, p[f"{name}.weight"], p[f"{name}.bias"], padding=pad)

    x = c((lq - MEAN) * 255.0, "conv_first")
    h, groups = x, []
    for g in range(n_groups):
        y = h
        for b in range(n_blocks):
            k = f"body.{g}.blocks.{b}"
            r = c(F.relu(c(y, f"{k}.conv1")), f"{k}.conv2")
            gate = torch.sigmoid(
                c(F.relu(c(r.mean((2, 3), keepdim=True), f"{k}.attention.down", 0)), f"{k}.attention.up", 0)
            )
            y = y + r * gate
        h = h + c(y, f"body.{g}.conv")
        groups.append(h)
    res = c(h, "conv_after_body")
    sr = c(F.pixel_shuffle(c(res + x, "upsample.0"), 2), "conv_last") / 255.0 + MEAN
    return sr, groups, res


def test_feats_are_the_outputs_of_groups_1_and_3_and_the_body_end():
    torch.manual_seed(0)
    m = RCAN(scale=2, n_feats=16, n_groups=4, n_blocks=2, reduction=4)  # third_points(4) = (1, 3)
    lq = torch.rand(2, 3, 6, 5)
    sr, feats = m(lq, return_feats=True)
    ref_sr, groups, res = hand_run(m, lq, 4, 2)
    assert torch.allclose(sr, ref_sr, atol=1e-5)
    assert torch.allclose(feats["f1"], groups[0], atol=1e-5)
    assert torch.allclose(feats["f2"], groups[2], atol=1e-5)
    assert torch.allclose(feats["f3"], res, atol=1e-5)
    assert not torch.allclose(feats["f2"], groups[1], atol=1e-3)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def rcan_count(c: int, groups: int, blocks: int, reduction: int) -> int:
    """RCAN x4 parameters by hand: RCAB = two 3x3 convs + two 1x1 attention convs; group = RCABs + conv."""
    conv = lambda i, o, k=3: k * k * i * o + o  # noqa: E731
    rcab = 2 * conv(c, c) + conv(c, c // reduction, 1) + conv(c // reduction, c, 1)
    group = blocks * rcab + conv(c, c)
    return conv(3, c) + groups * group + conv(c, c) + 2 * conv(c, 4 * c) + conv(c, 3)


def test_rcan_teacher_parameter_count_and_positions():
    m = RCAN(scale=4, n_feats=64, n_groups=10, n_blocks=20, reduction=16)
    assert n_params(m) == rcan_count(64, 10, 20, 16) == 15_592_355
    # the official model counts 15,592,379: the same weights plus two frozen 3x3+3 MeanShift convs
    official = OfficialRCAN(n_resgroups=10, n_resblocks=20, n_feats=64, reduction=16, scale=4)
    assert n_params(official) == 15_592_379 == n_params(m) + 2 * (9 + 3)
    assert m.taps == (2, 6)  # residual groups 3 and 7 (1-based), FAKD's positions


def test_rcan_student_parameter_count():
    m = RCAN(scale=4, n_feats=64, n_groups=10, n_blocks=6)
    assert n_params(m) == rcan_count(64, 10, 6, 16) == 5_171_315  # "5.2 M"
