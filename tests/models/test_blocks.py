"""Shared blocks and the SR skeleton (behaviour common to EDSR and RCAN)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from meta_kd_sr.models import EDSR, RCAN, third_points
from meta_kd_sr.models.blocks import RCAB, ChannelAttention, ResBlock, ResidualGroup, Upsampler, conv


def tiny(arch: str, scale: int = 4, **kw):
    torch.manual_seed(0)
    if arch == "edsr":
        return EDSR(scale=scale, n_feats=8, n_blocks=3, **kw)
    return RCAN(scale=scale, n_feats=8, n_groups=3, n_blocks=2, reduction=4, **kw)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, (1, 1)),
        (2, (1, 2)),
        (3, (1, 2)),
        (4, (1, 3)),
        (6, (2, 4)),
        (10, (3, 7)),
        (16, (5, 11)),
        (32, (11, 21)),
    ],
)
def test_third_points_known_values(n, expected):
    assert third_points(n) == expected


def test_third_points_rejects_empty_body():
    with pytest.raises(ValueError, match="need at least one body unit, got n=0"):
        third_points(0)


def test_conv_keeps_size_and_rejects_even_kernel():
    assert conv(2, 5, 5)(torch.zeros(1, 2, 7, 9)).shape == (1, 5, 7, 9)
    with pytest.raises(ValueError, match="odd kernel_size, got 4"):
        conv(2, 2, 4)


@pytest.mark.parametrize(
    ("scale", "convs"),
    [(2, [(16, 0)]), (3, [(36, 0)]), (4, [(16, 0), (16, 2)]), (8, [(16, 0), (16, 2), (16, 4)])],
)
def test_upsampler_layout_matches_edsr_and_basicsr(scale, convs):
    up = Upsampler(scale, 4)
    assert [(m.out_channels, int(i)) for i, m in up.named_children() if isinstance(m, torch.nn.Conv2d)] == [
        (c, i) for c, i in convs
    ]
    assert up(torch.zeros(1, 4, 3, 5)).shape == (1, 4, 3 * scale, 5 * scale)


def test_upsampler_rejects_unsupported_scale():
    with pytest.raises(ValueError, match="unsupported scale 5: use 3 or a power of two"):
        Upsampler(5, 4)


def _conv(x, m):
    return F.conv2d(x, m.weight, m.bias, padding=m.weight.shape[-1] // 2)


def test_resblock_and_rcab_match_hand_written_formulas():
    torch.manual_seed(1)
    x = torch.randn(2, 8, 5, 6)
    rb = ResBlock(8, res_scale=0.1)
    assert torch.allclose(rb(x), x + 0.1 * _conv(F.relu(_conv(x, rb.conv1)), rb.conv2), atol=1e-6)
    rc = RCAB(8, reduction=4, res_scale=0.5)
    y = _conv(F.relu(_conv(x, rc.conv1)), rc.conv2)
    w = torch.sigmoid(_conv(F.relu(_conv(y.mean((2, 3), keepdim=True), rc.attention.down)), rc.attention.up))
    assert torch.allclose(rc(x), x + 0.5 * y * w, atol=1e-6)
    rg = ResidualGroup(8, 2, reduction=4)
    assert torch.allclose(rg(x), x + _conv(rg.blocks[1](rg.blocks[0](x)), rg.conv), atol=1e-6)


def test_channel_attention_known_values():
    ca = ChannelAttention(8, reduction=2)
    x = torch.randn(1, 8, 3, 3)
    for p in ca.parameters():
        torch.nn.init.zeros_(p)
    assert torch.equal(ca(x), 0.5 * x)  # sigmoid(0) = 1/2 on every channel
    with torch.no_grad():
        ca.up.bias[:4] = 100.0  # saturated gate: channels 0-3 pass, 4-7 halved
    expected = torch.cat([x[:, :4], 0.5 * x[:, 4:]], dim=1)
    assert torch.allclose(ca(x), expected)
    with pytest.raises(ValueError, match="reduction 16 leaves no channels from n_feats=8"):
        ChannelAttention(8, 16)


@pytest.mark.parametrize("block", [ResBlock(3, 0.3), ChannelAttention(4, 2), RCAB(4, 2, 0.7)])
def test_blocks_gradcheck(block):
    block = block.double()
    c = block.conv1.in_channels if hasattr(block, "conv1") else block.down.in_channels
    x = torch.randn(1, c, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,))


@pytest.mark.parametrize("arch", ["edsr", "rcan"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_forward_shapes_finite_and_feats(arch, scale):
    m = tiny(arch, scale)
    lq = torch.rand(2, 3, 6, 7)
    sr, feats = m(lq, return_feats=True)
    assert sr.shape == (2, 3, 6 * scale, 7 * scale) and torch.isfinite(sr).all()
    assert list(feats) == ["f1", "f2", "f3"] == list(m.feature_names)
    assert all(f.shape == (2, 8, 6, 7) for f in feats.values())
    assert m.feature_channels == {"f1": 8, "f2": 8, "f3": 8} and m.scale == scale
    assert torch.equal(m(lq), sr)  # return_feats=False gives the same sr


@pytest.mark.parametrize("arch", ["edsr", "rcan"])
def test_zero_network_returns_the_mean(arch):
    # all weights zero -> the network outputs 0 and sr is exactly the de-normalised zero: the rgb mean
    m = tiny(arch, rgb_mean=(0.1, 0.2, 0.3))
    for p in m.parameters():
        torch.nn.init.zeros_(p)
    sr = m(torch.rand(1, 3, 4, 4))
    assert torch.allclose(sr, torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1).expand(1, 3, 16, 16))


@pytest.mark.parametrize("arch", ["edsr", "rcan"])
def test_mean_shift_and_img_range(arch):
    # the whole network sees (lq - mean) * img_range and returns out / img_range + mean: scaling img_range
    # by k and the first conv's weights by 1/k, and the last conv's weights/bias by k, changes nothing
    m1, m2 = tiny(arch), tiny(arch, img_range=1.0)
    m2.load_state_dict(m1.state_dict())
    with torch.no_grad():
        m2.conv_first.weight *= 255.0
        m2.conv_last.weight /= 255.0
        m2.conv_last.bias /= 255.0
    lq = torch.rand(1, 3, 5, 5)
    assert torch.allclose(m1(lq), m2(lq), atol=1e-5)
    assert "mean" not in m1.state_dict() and m1.mean.shape == (1, 3, 1, 1)


@pytest.mark.parametrize("arch", ["edsr", "rcan"])
def test_gradient_reaches_every_parameter(arch):
    m = tiny(arch)
    sr, feats = m(torch.rand(2, 3, 5, 5), return_feats=True)
    (sr.mean() + sum(f.pow(2).mean() for f in feats.values())).backward()
    assert [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()] == []
    # non-zero everywhere except where a 2-unit attention bottleneck may sit behind a dead ReLU
    zero = [n for n, p in m.named_parameters() if not p.grad.abs().sum() > 0 and "attention" not in n]
    assert zero == []


@pytest.mark.parametrize("arch", ["edsr", "rcan"])
def test_float64_and_input_validation(arch):
    m = tiny(arch).double()
    assert m(torch.rand(1, 3, 4, 4, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(
        ValueError, match=r"lq must be a float \(B, 3, h, w\) tensor, got torch.float64 \(3, 4, 4\)"
    ):
        m(torch.rand(3, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"got torch.uint8 \(1, 3, 4, 4\)"):
        m(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


def test_constructor_validation():
    with pytest.raises(ValueError, match="unsupported scale 6"):
        EDSR(scale=6)
    with pytest.raises(ValueError, match="must be >= 1, got 8 and 0"):
        EDSR(n_feats=8, n_blocks=0)
    with pytest.raises(ValueError, match="img_range must be positive, got 0"):
        RCAN(n_feats=8, n_groups=1, n_blocks=1, reduction=4, img_range=0)
    with pytest.raises(ValueError, match=r"rgb_mean needs 3 values \(R, G, B\), got \(0.5,\)"):
        EDSR(n_feats=8, n_blocks=1, rgb_mean=(0.5,))
    with pytest.raises(ValueError, match="n_blocks must be >= 1, got 0"):
        RCAN(n_feats=8, n_groups=1, n_blocks=0, reduction=4)


@pytest.mark.parametrize("arch", ["edsr", "rcan"])
def test_features_come_back_under_functional_calls(arch):
    # the meta step runs the student with fast weights (torch.func or higher, which drops forward hooks):
    # features must flow from forward with the substituted weights, identically in both engines
    higher = pytest.importorskip("higher")
    m = tiny(arch)
    lq = torch.rand(1, 3, 5, 5)
    fast = {k: p * 1.5 for k, p in m.named_parameters()}
    sr_f, feats_f = torch.func.functional_call(m, fast, (lq,), {"return_feats": True})
    sr_h, feats_h = higher.monkeypatch(m)(lq, params=list(fast.values()), return_feats=True)
    assert torch.equal(sr_f, sr_h) and all(torch.equal(feats_f[k], feats_h[k]) for k in feats_f)
    assert not torch.allclose(sr_f, m(lq), atol=1e-3)  # the fast weights were used
    g = torch.autograd.grad(feats_h["f1"].sum(), fast["conv_first.weight"])[0]
    assert g.abs().sum() > 0
