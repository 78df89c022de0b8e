"""KRNet: texture kernels, exact per-image / per-pixel filtering, the texture loss and its meta-gradient."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from meta_kd_sr.distill.krnet import (
    KRNetLoss,
    correlation_map,
    filter_per_image,
    filter_per_pixel,
    normalize_kernels,
    texture_loss,
)
from meta_kd_sr.meta import meta_gradient

CONFIGS = {
    "default": {},
    "static": {"dynamic": False},
    "spatial": {"spatial": True},
    "product": {"correlation": "product"},
    "absdiff": {"correlation": "absdiff"},
    "no_correlation": {"use_correlation": False},
    "softmax_rms": {"kernel_weighting": "softmax", "feature_norm": "rms"},
    "k5_not_detached": {"kernel_size": 5, "detach_input": False},
}


def feats(b=2, c=6, c_s=4, h=5, w=7, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    f_s, f_t = torch.randn(2, b, c, h, w, generator=g, dtype=dtype)
    return f_s, f_t, torch.randn(b, c_s, h, w, generator=g, dtype=dtype)


def krnet(dtype=torch.float64, seed=0, **kw) -> KRNetLoss:
    torch.manual_seed(seed)
    return KRNetLoss(6, student_channels=4, n_kernels=3, hidden=8, **kw).to(dtype)


@pytest.mark.parametrize("name", CONFIGS)
def test_kernels_are_zero_mean_and_unit_norm(name) -> None:
    net = krnet(torch.float32, **CONFIGS[name])
    f_s, f_t, raw = feats(dtype=torch.float32)
    k = net.kernels(f_s, f_t, raw)
    size = net.kernel_size
    expected_shape = (2, 3, 5, 7, size, size) if net.spatial else (2, 3, size, size)
    assert k.shape == expected_shape
    flat = k.flatten(-2)
    torch.testing.assert_close(flat.sum(-1), torch.zeros(flat.shape[:-1]), rtol=0, atol=1e-6)
    torch.testing.assert_close(flat.norm(dim=-1), torch.ones(flat.shape[:-1]), rtol=0, atol=1e-6)


def test_normalize_kernels_known_values() -> None:
    delta = torch.zeros(3, 3, dtype=torch.float64)
    delta[1, 1] = 1.0
    # centred: 8/9 at the centre, -1/9 elsewhere; norm sqrt(72)/9
    expected = (delta - 1 / 9) * 9 / math.sqrt(72)
    torch.testing.assert_close(normalize_kernels(delta), expected, rtol=0, atol=1e-15)
    flat_kernel = normalize_kernels(torch.full((2, 3, 3), 4.0))
    assert torch.equal(flat_kernel, torch.zeros(2, 3, 3))  # a constant kernel has no texture, and no NaN


def test_filter_per_image_equals_single_image_conv_loop() -> None:
    x = torch.randn(3, 4, 6, 5, dtype=torch.float64)
    kernels = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    out = filter_per_image(x, kernels)
    for b in range(3):
        for i in range(2):
            weight = kernels[b, i].expand(4, 1, 5, 5)
            ref = F.conv2d(x[b : b + 1], weight, padding=2, groups=4)[0]
            torch.testing.assert_close(out[b, i], ref, rtol=0, atol=1e-13)


def test_filter_per_pixel_equals_explicit_loop() -> None:
    b, c, h, w, n, k = 2, 3, 4, 5, 2, 3
    x = torch.randn(b, c, h, w, dtype=torch.float64)
    kernels = torch.randn(b, n, h, w, k, k, dtype=torch.float64)
    padded = F.pad(x, (1, 1, 1, 1))
    ref = torch.zeros(b, n, c, h, w, dtype=torch.float64)
    for bi in range(b):
        for i in range(n):
            for y in range(h):
                for xx in range(w):
                    patch = padded[bi, :, y : y + k, xx : xx + k]  # (C, k, k), zero outside the image
                    ref[bi, i, :, y, xx] = (patch * kernels[bi, i, y, xx]).sum(dim=(1, 2))
    torch.testing.assert_close(filter_per_pixel(x, kernels), ref, rtol=0, atol=1e-13)


def test_spatial_filtering_with_a_constant_kernel_field_equals_per_image() -> None:
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    kernels = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    field = kernels[:, :, None, None].expand(2, 4, 6, 6, 3, 3)
    torch.testing.assert_close(filter_per_pixel(x, field), filter_per_image(x, kernels), rtol=0, atol=1e-13)


def separate_filtering_reference(net: KRNetLoss, f_s, f_t, raw) -> torch.Tensor:
    """The texture loss literally: E_S = K * F_S, E_T = K * F_T filtered apart, mean of L1 over kernels."""
    kernels = net.kernels(f_s, f_t, raw)
    if net.feature_norm == "rms":
        rms = f_t.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
        f_s, f_t = f_s / rms, f_t / rms
    apply = filter_per_pixel if net.spatial else filter_per_image
    per_kernel = (apply(f_t, kernels) - apply(f_s, kernels)).abs().mean(dim=(0, 2, 3, 4))
    if net.kernel_weighting == "softmax":
        return (per_kernel * net.kernel_logits.softmax(0)).sum()
    return per_kernel.mean()


@pytest.mark.parametrize("name", ["default", "spatial", "static", "softmax_rms"])
def test_loss_equals_separate_filtering_reference(name) -> None:
    net = krnet(**CONFIGS[name])
    if net.kernel_weighting == "softmax":
        with torch.no_grad():
            net.kernel_logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
    f_s, f_t, raw = feats()
    torch.testing.assert_close(
        net(f_s, f_t, raw), separate_filtering_reference(net, f_s, f_t, raw), rtol=1e-12, atol=0
    )


def test_known_value_for_a_delta_residual() -> None:
    net = KRNetLoss(1, n_kernels=1, dynamic=False).double()
    f_t = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    f_t[0, 0, 2, 2] = 1.0
    kernel = normalize_kernels(net.static_kernels)[0]
    # the response to a centred delta is the (flipped) kernel itself: 9 non-zero pixels out of 25
    expected = kernel.abs().sum() / 25
    torch.testing.assert_close(net(torch.zeros_like(f_t), f_t), expected, rtol=1e-14, atol=0)
    assert net.needs_adapter and net.uses_raw_student and not net.pairwise


@pytest.mark.parametrize(
    "kwargs",
    [
        {"detach_input": False},
        {"detach_input": False, "spatial": True, "correlation": "product"},
        {"detach_input": False, "kernel_size": 5, "correlation": "absdiff", "feature_norm": "rms"},
        # detached and without R the kernels do not depend on f_s: the stop-gradient is then the true gradient
        {"use_correlation": False},
    ],
)
def test_gradcheck_wrt_student_feature(kwargs) -> None:
    net = krnet(**kwargs)
    f_s, f_t, raw = feats(b=2, h=4, w=4)
    f_s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: net(s, f_t, raw), (f_s,))


def test_gradcheck_texture_loss_wrt_kernels() -> None:
    residual = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    raw = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    spatial = torch.randn(2, 3, 4, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r, k: texture_loss(r, normalize_kernels(k)), (residual, raw))
    assert torch.autograd.gradcheck(lambda r, k: texture_loss(r, normalize_kernels(k)), (residual, spatial))


def test_detached_inputs_give_the_student_fixed_kernels() -> None:
    f_s, f_t, _ = feats(c_s=6)
    for detach, same in ((True, True), (False, False)):
        torch.manual_seed(0)
        net = KRNetLoss(6, n_kernels=3, hidden=8, detach_input=detach).double()  # generator reads f_s
        s = f_s.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(net(s, f_t), s)
        fixed = net.kernels(f_s, f_t).detach()
        (g_fixed,) = torch.autograd.grad(texture_loss(f_t - s, fixed), s)
        assert torch.allclose(g, g_fixed, rtol=0, atol=1e-15) is same


def test_dynamic_kernels_depend_on_the_image_static_ones_do_not() -> None:
    f_s, f_t, raw = feats()
    dynamic = krnet().kernels(f_s, f_t, raw)
    assert (dynamic[0] - dynamic[1]).abs().max() > 1e-3
    static = krnet(dynamic=False).kernels(f_s, f_t, raw)
    assert torch.equal(static[0], static[1])


def test_generator_width_follows_the_student() -> None:
    net = KRNetLoss(256, student_channels=16)
    assert net.body[0].in_channels == 17  # C_s + 1 (cosine correlation)
    assert KRNetLoss(256, student_channels=16, use_correlation=False).body[0].in_channels == 16
    assert KRNetLoss(8, student_channels=4, correlation="product").body[0].in_channels == 12


class TinyStudent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Conv2d(4, 4, 3, padding=1)
        self.tail = nn.Sequential(nn.Conv2d(4, 12, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, lq, return_feats=False):
        f1 = self.head(lq)
        f2 = f1 + torch.tanh(self.body(f1))
        sr = self.tail(f2)
        return (sr, {"f1": f1, "f2": f2}) if return_feats else sr


@pytest.mark.parametrize("name", CONFIGS)
def test_every_krnet_parameter_gets_a_meta_gradient(name) -> None:
    torch.manual_seed(0)
    student = TinyStudent().double()
    adapters = nn.ModuleDict({k: nn.Conv2d(4, 6, 1) for k in ("f1", "f2")}).double()
    nets = nn.ModuleDict({k: krnet(seed=i, **CONFIGS[name]) for i, k in enumerate(("f1", "f2"))})
    lq, meta_lq = torch.rand(2, 2, 3, 5, 5, dtype=torch.float64)
    gt, meta_gt = torch.rand(2, 2, 3, 10, 10, dtype=torch.float64)
    feats_t = {k: torch.randn(2, 6, 5, 5, dtype=torch.float64) for k in nets}

    def inner_loss(sr, fs):
        kd = sum(nets[k](adapters[k](fs[k]), feats_t[k], fs[k]) for k in nets)
        return F.l1_loss(sr, gt) + kd

    params = list(nets.parameters())
    result = meta_gradient(student, params, inner_loss, lq, meta_lq, meta_gt)
    for (pname, p), g in zip(nets.named_parameters(), result.grads):
        assert g.shape == p.shape and torch.isfinite(g).all()
        assert g.abs().sum() > 0, f"{pname} gets no meta-gradient"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"correlation": "dot"}, r"correlation must be one of \('cosine', 'product', 'absdiff'\), got 'dot'"),
        ({"kernel_size": 4}, r"kernel_size must be odd and positive \('same' padding\), got 4"),
        ({"kernel_weighting": "max"}, r"kernel_weighting must be one of \('mean', 'softmax'\), got 'max'"),
        ({"feature_norm": "l2"}, r"feature_norm must be one of \(None, 'rms'\), got 'l2'"),
        ({"spatial": True, "dynamic": False}, "spatial=True needs dynamic=True"),
        ({"student_channels": 0}, "student_channels must be >= 1, got 0"),
    ],
)
def test_bad_construction(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        KRNetLoss(6, **kwargs)


def test_bad_inputs() -> None:
    net = krnet()
    f_s, f_t, raw = feats()
    with pytest.raises(
        ValueError, match=r"f_s and f_t must both be \(B, C, H, W\) of equal shape, got \(2, 4, 5, 7\)"
    ):
        net(raw, f_t)
    with pytest.raises(ValueError, match=r"expected 6 teacher channels, got f_t of shape \(2, 5, 5, 7\)"):
        net(f_s[:, :5], f_t[:, :5], raw)
    with pytest.raises(
        ValueError, match=r"f_s_raw must be \(B, C_s, H, W\) = \(2, 4, 5, 7\), got \(2, 6, 5, 7\)"
    ):
        net(f_s, f_t)
    with pytest.raises(ValueError, match="correlation must be one of"):
        correlation_map(f_s, f_t, "dot")


def test_correlation_map_values() -> None:
    f_s, f_t, _ = feats()
    torch.testing.assert_close(correlation_map(f_s, 2 * f_s), torch.ones(2, 1, 5, 7, dtype=torch.float64))
    torch.testing.assert_close(correlation_map(f_s, -f_s), -torch.ones(2, 1, 5, 7, dtype=torch.float64))
    product = correlation_map(f_s, f_t, "product")
    torch.testing.assert_close(
        product.sum(1, keepdim=True), correlation_map(f_s, f_t), rtol=1e-12, atol=1e-12
    )
    assert torch.equal(correlation_map(f_s, f_t, "absdiff"), (f_t - f_s).abs())


def test_prepared_generator_input_is_built_once_and_changes_nothing() -> None:
    net = krnet()
    f_s, f_t, raw = feats()
    calls = []
    original = correlation_map

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    import meta_kd_sr.distill.krnet as module

    before = net(f_s, f_t, raw)
    module.correlation_map = counting
    try:
        prepared = net.prepare(f_s, f_t, raw)
        first = net(f_s, f_t, raw, prepared=prepared)
        with torch.no_grad():  # phi changes between the meta step and the real step
            net.head.bias.add_(0.3)
        second = net(f_s, f_t, raw, prepared=prepared)
        with pytest.raises(ValueError, match=r"prepare\(\) was called on another batch"):
            net(*(t[:1] for t in (f_s, f_t, raw)), prepared=prepared)
        assert len(calls) == 1  # in prepare() only
    finally:
        module.correlation_map = original
    assert prepared.grad_fn is None and not prepared.requires_grad
    assert torch.equal(second, net(f_s, f_t, raw)) and not torch.equal(first, second)
    with torch.no_grad():
        net.head.bias.sub_(0.3)
    assert torch.equal(first, before)
    # nothing phi-free to prepare: static kernels, or inputs that keep their graph
    assert krnet(dynamic=False).prepare(f_s, f_t, raw) is None
    assert krnet(detach_input=False).prepare(f_s, f_t, raw) is None
