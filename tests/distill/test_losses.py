from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from meta_kd_sr.distill.losses import (
    ATLoss,
    FAKDLoss,
    FitNetLoss,
    FSPLoss,
    OutputLoss,
    at_loss,
    attention_map,
    fakd_loss,
    fitnet_loss,
    fsp_loss,
    fsp_matrix,
    output_loss,
    spatial_affinity,
)


def _rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


# ----------------------------------------------------------------------------- FitNet


def test_fitnet_known_value() -> None:
    f_s = torch.arange(1.0, 9.0).reshape(1, 2, 2, 2)  # values 1..8
    f_t = torch.full((1, 2, 2, 2), 2.0)
    # differences -1, 0, 1, ..., 6: L1 mean = (1+0+1+2+3+4+5+6)/8 = 22/8
    # L2 mean = (1+0+1+4+9+16+25+36)/8 = 92/8
    assert fitnet_loss(f_s, f_t, p=1).item() == pytest.approx(2.75)
    assert fitnet_loss(f_s, f_t, p=2).item() == pytest.approx(11.5)
    assert fitnet_loss(f_s, f_s).item() == 0.0


@pytest.mark.parametrize("p", [1, 2])
def test_fitnet_module_matches_function(p: int) -> None:
    f_s, f_t = _rand(2, 3, 4, 5, seed=1), _rand(2, 3, 4, 5, seed=2)
    assert torch.equal(FitNetLoss(p)(f_s, f_t), fitnet_loss(f_s, f_t, p))
    assert FitNetLoss.needs_adapter and not FitNetLoss.pairwise


def test_fitnet_gradcheck() -> None:
    f_s = _rand(1, 2, 3, 3, seed=3, dtype=torch.float64).requires_grad_()
    f_t = _rand(1, 2, 3, 3, seed=4, dtype=torch.float64).requires_grad_()
    assert gradcheck(lambda a, b: fitnet_loss(a, b, p=1), (f_s, f_t))
    assert gradcheck(lambda a, b: fitnet_loss(a, b, p=2), (f_s, f_t))


def test_fitnet_errors() -> None:
    with pytest.raises(ValueError, match=r"use an adapter"):
        fitnet_loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 8, 2, 2))
    with pytest.raises(ValueError, match=r"\(1, 4, 2, 2\) and teacher feature \(1, 4, 3, 2\)"):
        fitnet_loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 3, 2))
    with pytest.raises(ValueError, match=r"must be a \(B, C, h, w\) tensor, got \(4, 2, 2\)"):
        fitnet_loss(torch.zeros(4, 2, 2), torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="p must be 1 or 2, got 3"):
        FitNetLoss(p=3)


# ----------------------------------------------------------------------------- AT


def test_attention_map_and_at_known_value() -> None:
    # student, 2 channels, both [[1, 1], [0, 0]]: Q = [2, 2, 0, 0] -> [1/sqrt2, 1/sqrt2, 0, 0]
    f_s = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]]])
    # teacher, 1 channel [[1, 0], [1, 0]]: Q = [1, 0, 1, 0] -> [1/sqrt2, 0, 1/sqrt2, 0]
    f_t = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(attention_map(f_s), torch.tensor([[r, r, 0.0, 0.0]]))
    # Q_S - Q_T = [0, r, -r, 0], whose L2 norm is 1
    assert at_loss(f_s, f_t).item() == pytest.approx(1.0)
    # batch mean: a second image where student == teacher contributes 0 -> (1 + 0) / 2
    f_s2 = torch.cat([f_s, f_t.expand(1, 2, 2, 2)])
    f_t2 = torch.cat([f_t, f_t])
    assert at_loss(f_s2, f_t2).item() == pytest.approx(0.5)


def test_at_module_matches_function() -> None:
    f_s, f_t = _rand(2, 3, 4, 4, seed=5), _rand(2, 6, 4, 4, seed=6)
    assert torch.equal(ATLoss(p=2)(f_s, f_t), at_loss(f_s, f_t, p=2))
    assert torch.equal(ATLoss(p=1)(f_s, f_t), at_loss(f_s, f_t, p=1))
    assert not ATLoss.needs_adapter and not ATLoss.pairwise


def test_at_zero_for_scaled_or_duplicated_teacher() -> None:
    f_s = _rand(2, 3, 4, 4, seed=7)
    assert at_loss(f_s, f_s).item() == 0.0
    # a positive per-image scale multiplies Q by c^p, removed by the normalisation
    scale = torch.tensor([0.5, 3.0]).view(2, 1, 1, 1)
    assert at_loss(f_s, scale * f_s).item() == pytest.approx(0.0, abs=1e-6)
    # duplicating channels doubles Q: also invisible, and the channel counts differ
    assert at_loss(f_s, torch.cat([f_s, f_s], dim=1)).item() == pytest.approx(0.0, abs=1e-6)
    # a per-pixel scale is NOT invisible to AT
    pix = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.5
    assert at_loss(f_s, pix * f_s).item() > 1e-3


def test_at_gradcheck() -> None:
    f_s = _rand(2, 2, 3, 3, seed=8, dtype=torch.float64).requires_grad_()
    f_t = _rand(2, 3, 3, 3, seed=9, dtype=torch.float64).requires_grad_()
    assert gradcheck(lambda a, b: at_loss(a, b, p=2), (f_s, f_t))


def test_at_errors() -> None:
    with pytest.raises(
        ValueError, match=r"student feature \(2, 3, 4, 4\) and teacher feature \(2, 3, 4, 5\)"
    ):
        at_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5))
    with pytest.raises(
        ValueError, match=r"student feature \(2, 3, 4, 4\) and teacher feature \(1, 3, 4, 4\)"
    ):
        at_loss(torch.zeros(2, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, C, h, w\) tensor, got \(3, 16\)"):
        attention_map(torch.zeros(3, 16))


# ----------------------------------------------------------------------------- FSP


def test_fsp_known_value() -> None:
    f_a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    f_b = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]])  # (1, 2, 2, 2)
    # G = [(1*1 + 4*1) / 4, (1 + 2 + 3 + 4) / 4] = [1.25, 2.5]
    torch.testing.assert_close(fsp_matrix(f_a, f_b), torch.tensor([[[1.25, 2.5]]]))
    # teacher pair with a zero second feature: G_T = 0, loss = (1.25^2 + 2.5^2) / 2 = 3.90625
    assert fsp_loss([f_a, f_b], [f_a, torch.zeros_like(f_b)]).item() == pytest.approx(3.90625)
    assert fsp_loss([f_a, f_b], [f_a, f_b]).item() == 0.0


def test_fsp_matches_einsum_reference() -> None:
    shapes = [(2, 3, 4, 5), (2, 2, 4, 5), (2, 4, 4, 5)]
    feats_s = [_rand(*s, seed=10 + i) for i, s in enumerate(shapes)]
    feats_t = [_rand(*s, seed=20 + i) for i, s in enumerate(shapes)]

    def gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bihw,bjhw->bij", a, b) / (a.shape[2] * a.shape[3])

    torch.testing.assert_close(fsp_matrix(feats_s[0], feats_s[1]), gram(feats_s[0], feats_s[1]))
    pairs = [((gram(*feats_s[i : i + 2]) - gram(*feats_t[i : i + 2])) ** 2).mean() for i in range(2)]
    expected = (pairs[0] + pairs[1]) / 2
    torch.testing.assert_close(fsp_loss(feats_s, feats_t), expected)
    assert torch.equal(FSPLoss()(feats_s, feats_t), fsp_loss(feats_s, feats_t))
    assert FSPLoss.needs_adapter and FSPLoss.pairwise


def test_fsp_gradcheck() -> None:
    feats = [_rand(1, c, 3, 2, seed=30 + c, dtype=torch.float64).requires_grad_() for c in (2, 3, 2)]
    feats_t = [_rand(1, c, 3, 2, seed=40 + c, dtype=torch.float64).requires_grad_() for c in (2, 3, 2)]
    assert gradcheck(lambda *fs: fsp_loss(fs[:3], fs[3:]), (*feats, *feats_t))


def test_fsp_errors() -> None:
    with pytest.raises(
        ValueError, match=r"equal batch and spatial size, got \(1, 2, 4, 4\) and \(1, 3, 2, 2\)"
    ):
        fsp_matrix(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 2, 2))
    with pytest.raises(
        ValueError, match=r"has 2 channels but teacher feature \(1, 8, 4, 4\) has 8; use an adapter"
    ):
        fsp_loss([torch.zeros(1, 2, 4, 4)] * 2, [torch.zeros(1, 8, 4, 4)] * 2)
    with pytest.raises(ValueError, match="at least 2 positions"):
        fsp_loss([torch.zeros(1, 2, 4, 4)], [torch.zeros(1, 2, 4, 4)])
    with pytest.raises(ValueError, match="got 2 and 3"):
        fsp_loss([torch.zeros(1, 2, 4, 4)] * 2, [torch.zeros(1, 2, 4, 4)] * 3)


# ----------------------------------------------------------------------------- FAKD


def test_fakd_known_value() -> None:
    # student (1, 2, 1, 2): pixels (1, 0) and (1, 1) -> unit (1, 0), (r, r): A_S = [[1, r], [r, 1]]
    f_s = torch.tensor([[[[1.0, 1.0]], [[0.0, 1.0]]]])
    # teacher (1, 1, 1, 2): pixels 1 and 2 -> unit 1, 1: A_T = all ones
    f_t = torch.tensor([[[[1.0, 2.0]]]])
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(spatial_affinity(f_s), torch.tensor([[[1.0, r], [r, 1.0]]]))
    # |A_S - A_T| = [[0, 1 - r], [1 - r, 0]], mean = (2 - sqrt2) / 4
    assert fakd_loss(f_s, f_t).item() == pytest.approx((2 - math.sqrt(2)) / 4)


def test_spatial_affinity_matches_pixel_loop() -> None:
    f = _rand(1, 3, 2, 2, seed=11, dtype=torch.float64)
    pixels = [f[0, :, i, j] for i in range(2) for j in range(2)]  # row-major order
    expected = torch.empty(4, 4, dtype=torch.float64)
    for a, pa in enumerate(pixels):
        for b, pb in enumerate(pixels):
            expected[a, b] = (pa * pb).sum() / (pa.norm() * pb.norm())
    torch.testing.assert_close(spatial_affinity(f)[0], expected)


def test_fakd_module_and_invariances() -> None:
    f_s, f_t = _rand(2, 3, 3, 4, seed=12), _rand(2, 5, 3, 4, seed=13)
    assert torch.equal(FAKDLoss()(f_s, f_t), fakd_loss(f_s, f_t))
    assert not FAKDLoss.needs_adapter and not FAKDLoss.pairwise
    # positive per-pixel scaling and channel duplication leave the affinity unchanged
    pix = torch.rand(2, 1, 3, 4, generator=torch.Generator().manual_seed(1)) + 0.5
    assert fakd_loss(f_s, f_s).item() == pytest.approx(0.0, abs=1e-7)
    assert fakd_loss(f_s, pix * f_s).item() == pytest.approx(0.0, abs=1e-6)
    assert fakd_loss(f_s, torch.cat([f_s, f_s], dim=1)).item() == pytest.approx(0.0, abs=1e-6)
    # a sign flip of one pixel is not a positive scaling
    flip = torch.ones(2, 1, 3, 4)
    flip[:, :, 0, 0] = -1
    assert fakd_loss(f_s, flip * f_s).item() > 1e-2


def test_fakd_zero_pixel_is_finite() -> None:
    f = _rand(1, 3, 2, 2, seed=14).requires_grad_()
    mask = torch.ones(1, 1, 2, 2)
    mask[..., 0, 0] = 0
    loss = fakd_loss(f * mask, _rand(1, 4, 2, 2, seed=15))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f.grad).all()


def test_fakd_gradcheck() -> None:
    f_s = _rand(1, 2, 2, 3, seed=16, dtype=torch.float64).requires_grad_()
    f_t = _rand(1, 3, 2, 3, seed=17, dtype=torch.float64).requires_grad_()
    assert gradcheck(fakd_loss, (f_s, f_t))


def test_fakd_errors() -> None:
    with pytest.raises(
        ValueError, match=r"student feature \(1, 3, 4, 4\) and teacher feature \(1, 3, 2, 2\)"
    ):
        fakd_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"got \(3, 4, 4\)"):
        spatial_affinity(torch.zeros(3, 4, 4))


# ----------------------------------------------------------------------------- output KD


def test_output_loss() -> None:
    sr_s = torch.tensor([0.0, 0.5, 1.0, 0.25]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    sr_t = torch.full((1, 3, 2, 2), 0.5)
    # |diff| = 0.5, 0, 0.5, 0.25 per channel -> mean 1.25 / 4
    assert output_loss(sr_s, sr_t).item() == pytest.approx(0.3125)
    assert torch.equal(OutputLoss()(sr_s, sr_t), output_loss(sr_s, sr_t))
    a = _rand(1, 3, 2, 2, seed=18, dtype=torch.float64).requires_grad_()
    assert gradcheck(output_loss, (a, _rand(1, 3, 2, 2, seed=19, dtype=torch.float64)))
    with pytest.raises(ValueError, match=r"student output \(1, 3, 4, 4\) and teacher output \(1, 3, 8, 8\)"):
        output_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 8, 8))
