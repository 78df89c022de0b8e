"""EDSR: feature positions against a hand-run of its weights, parameter counts of the paper-scale presets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from meta_kd_sr.models import EDSR

MEAN = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)


def hand_run(m: EDSR, lq: torch.Tensor, n_blocks: int, res_scale: float):
    """EDSR written out with F.conv2d on the named weights: (sr, outputs of every block, body-end conv)."""
    p = dict(m.named_parameters())

    def c(x, name):
        return F.conv2d(x, p[f"{name}.weight"], p[f"{name}.bias"], padding=1)

    x = c((lq - MEAN) * 255.0, "conv_first")
    h, blocks = x, []
    for i in range(n_blocks):
        h = h + res_scale * c(F.relu(c(h, f"body.{i}.conv1")), f"body.{i}.conv2")
        blocks.append(h)
    res = c(h, "conv_after_body")
    up = F.pixel_shuffle(c(F.pixel_shuffle(c(res + x, "upsample.0"), 2), "upsample.2"), 2)
    return c(up, "conv_last") / 255.0 + MEAN, blocks, res


def test_feats_are_the_outputs_of_blocks_2_and_4_and_the_body_end():
    torch.manual_seed(0)
    m = EDSR(scale=4, n_feats=12, n_blocks=6, res_scale=0.5)  # third_points(6) = (2, 4)
    lq = torch.rand(2, 3, 7, 5)
    sr, feats = m(lq, return_feats=True)
    ref_sr, blocks, res = hand_run(m, lq, 6, 0.5)
    assert torch.allclose(sr, ref_sr, atol=1e-5)
    assert torch.allclose(feats["f1"], blocks[1], atol=1e-5)
    assert torch.allclose(feats["f2"], blocks[3], atol=1e-5)
    assert torch.allclose(feats["f3"], res, atol=1e-5)
    assert not torch.allclose(feats["f1"], blocks[0], atol=1e-3)  # the positions are distinguishable


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def edsr_count(c: int, n: int, scale: int = 4) -> int:
    """EDSR parameters by hand: head, n blocks of two convs, body-end conv, x2 upsampling stages, tail."""
    conv = lambda i, o: 9 * i * o + o  # noqa: E731
    stages = {2: 1, 4: 2}[scale]
    return conv(3, c) + 2 * n * conv(c, c) + conv(c, c) + stages * conv(c, 4 * c) + conv(c, 3)


def test_edsr_baseline_parameter_count():
    m = EDSR(scale=4, n_feats=64, n_blocks=16)
    assert n_params(m) == edsr_count(64, 16) == 1_517_571  # EDSR-baseline x4, "1.5 M"


def test_edsr_teacher_parameter_count():
    m = EDSR(scale=4, n_feats=256, n_blocks=32, res_scale=0.1)
    assert n_params(m) == edsr_count(256, 32) == 43_089_923  # EDSR x4, "43 M"
    assert m.taps == (10, 20)  # blocks 11 and 21 (1-based)
    assert m.feature_channels == {"f1": 256, "f2": 256, "f3": 256}


@pytest.mark.parametrize("n_blocks", [1, 2])
def test_shallow_body_gives_valid_positions(n_blocks):
    torch.manual_seed(0)
    m = EDSR(scale=2, n_feats=4, n_blocks=n_blocks)
    lq = torch.rand(1, 3, 4, 4)
    _, feats = m(lq, return_feats=True)
    _, blocks, res = hand_run_x2(m, lq, n_blocks)
    assert torch.allclose(feats["f1"], blocks[0], atol=1e-5)
    assert torch.allclose(feats["f2"], blocks[-1], atol=1e-5)
    assert torch.allclose(feats["f3"], res, atol=1e-5)


def hand_run_x2(m, lq, n_blocks):
    p = dict(m.named_parameters())

    def c(x, name):
        return F.conv2d(x, p[f"{name}.weight"], p[f"{name}.bias"], padding=1)

    x = c((lq - MEAN) * 255.0, "conv_first")
    h, blocks = x, []
    for i in range(n_blocks):
        h = h + c(F.relu(c(h, f"body.{i}.conv1")), f"body.{i}.conv2")
        blocks.append(h)
    res = c(h, "conv_after_body")
    return c(F.pixel_shuffle(c(res + x, "upsample.0"), 2), "conv_last") / 255.0 + MEAN, blocks, res
