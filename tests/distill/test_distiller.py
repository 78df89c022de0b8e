from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from meta_kd_sr.distill import (
    ATLoss,
    Distiller,
    FAKDLoss,
    FitNetLoss,
    FSPLoss,
    KDLoss,
    KRNetLoss,
    fakd_loss,
    fitnet_loss,
    fsp_loss,
)

POS = ("f1", "f2", "f3")
S_CH = {"f1": 4, "f2": 4, "f3": 6}
T_CH = {"f1": 8, "f2": 4, "f3": 12}


def _feats(channels: dict[str, int], seed: int, requires_grad: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(2, c, 5, 6, generator=g).requires_grad_(requires_grad) for k, c in channels.items()
    }


def _images(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sr_s = torch.rand(2, 3, 10, 12, generator=g).requires_grad_()
    return sr_s, torch.rand(2, 3, 10, 12, generator=g), torch.rand(2, 3, 10, 12, generator=g)


class LearnableLoss(KDLoss):
    """A learnable per-position loss reading the teacher width only (like a KRNet)."""

    needs_adapter = True
    uses_raw_student = True
    needs_channels = True

    def __init__(self, channels: int, student_channels: int | None = None, gain: float = 1.0) -> None:
        super().__init__(channels, student_channels)
        self.scale = nn.Parameter(torch.full((1, channels, 1, 1), gain))
        self.raw_shapes: list[tuple[int, ...]] = []

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor, f_s_raw: torch.Tensor) -> torch.Tensor:
        self.raw_shapes.append(tuple(f_s_raw.shape))
        return (self.scale * (f_s - f_t)).abs().mean()


def test_scratch_and_output_kd_totals() -> None:
    sr_s, sr_t, gt = _images(0)
    scratch = Distiller()
    out = scratch(sr_s, None, gt)
    assert set(out) == {"loss_rec", "loss"}
    expected_rec = (sr_s - gt).abs().sum() / sr_s.numel()
    torch.testing.assert_close(out["loss"], expected_rec)
    assert not scratch.needs_teacher and not scratch.needs_feats
    okd = Distiller(output_weight=0.5, rec_weight=0.5)
    out = okd(sr_s, None, gt, sr_t=sr_t)
    assert set(out) == {"loss_rec", "loss_out", "loss"}
    expected_out = (sr_s - sr_t).abs().sum() / sr_s.numel()
    torch.testing.assert_close(out["loss_out"], expected_out)
    torch.testing.assert_close(out["loss"], 0.5 * expected_rec + 0.5 * expected_out)
    assert okd.needs_teacher and not okd.needs_feats


def test_fakd_total_is_weighted_sum() -> None:
    sr_s, sr_t, gt = _images(1)
    fs, ft = _feats(S_CH, 2, True), _feats(T_CH, 3, False)
    d = Distiller(
        loss=FAKDLoss, kd_weight=10.0, position_weights=(1.0, 0.5, 2.0), rec_weight=0.5, output_weight=0.5
    )
    out = d(sr_s, fs, gt, sr_t=sr_t, feats_t=ft)
    per_pos = [fakd_loss(fs[p], ft[p]) for p in POS]
    for p, v in zip(POS, per_pos):
        torch.testing.assert_close(out[f"loss_kd_{p}"], v)
    kd = 1.0 * per_pos[0] + 0.5 * per_pos[1] + 2.0 * per_pos[2]
    torch.testing.assert_close(out["loss_kd"], kd)
    rec = (sr_s - gt).abs().mean()
    outk = (sr_s - sr_t).abs().mean()
    torch.testing.assert_close(out["loss"], 0.5 * rec + 0.5 * outk + 10.0 * kd)
    assert d.meta_parameters() == [] and d.student_side_parameters() == []
    assert all(isinstance(a, nn.Identity) for a in d.adapters.values())


def test_adapters_exactly_where_widths_differ_and_loss_needs_them() -> None:
    fit = Distiller(loss=FitNetLoss, student_channels=S_CH, teacher_channels=T_CH)
    assert isinstance(fit.adapters["f1"], nn.Conv2d) and fit.adapters["f1"].weight.shape == (8, 4, 1, 1)
    assert isinstance(fit.adapters["f2"], nn.Identity)
    assert isinstance(fit.adapters["f3"], nn.Conv2d) and fit.adapters["f3"].weight.shape == (12, 6, 1, 1)
    assert len(fit.student_side_parameters()) == 4  # two convs, weight + bias
    assert fit.meta_parameters() == []
    for loss in (ATLoss, FAKDLoss):
        d = Distiller(loss=loss, student_channels=S_CH, teacher_channels=T_CH)
        assert all(isinstance(a, nn.Identity) for a in d.adapters.values())


def test_fitnet_gradients_reach_student_and_adapters_not_teacher() -> None:
    sr_s, _, gt = _images(4)
    fs, ft = _feats(S_CH, 5, True), _feats(T_CH, 6, True)  # teacher leaves must stay grad-free
    d = Distiller(loss=functools.partial(FitNetLoss, p=2), student_channels=S_CH, teacher_channels=T_CH)
    out = d(sr_s, fs, gt, feats_t=ft)
    with torch.no_grad():
        expected = sum(fitnet_loss(d.adapters[p](fs[p]), ft[p], p=2) for p in POS)
    torch.testing.assert_close(out["loss_kd"], expected)
    out["loss"].backward()
    assert all(fs[p].grad is not None and fs[p].grad.abs().sum() > 0 for p in POS)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.student_side_parameters())
    assert all(ft[p].grad is None for p in POS)
    assert sr_s.grad.abs().sum() > 0


def test_missing_adapter_gives_clear_error() -> None:
    sr_s, _, gt = _images(7)
    d = Distiller(loss=FitNetLoss)
    with pytest.raises(
        ValueError, match="position f1: student has 4 channels, teacher 8; pass student_channels"
    ):
        d(sr_s, _feats(S_CH, 8, True), gt, feats_t=_feats(T_CH, 9, False))


def test_missing_teacher_and_positions_errors() -> None:
    sr_s, _, gt = _images(10)
    fs, ft = _feats(S_CH, 11, True), _feats(T_CH, 12, False)
    with pytest.raises(ValueError, match="output_weight=0.5 needs the teacher output sr_t"):
        Distiller(output_weight=0.5)(sr_s, None, gt)
    with pytest.raises(ValueError, match="needs teacher features, got None"):
        Distiller(loss=ATLoss)(sr_s, fs, gt)
    with pytest.raises(
        ValueError, match=r"teacher features have no positions \['f4'\]; available keys: \['f1', 'f2'"
    ):
        Distiller(loss=ATLoss, positions=("f1", "f4"))(sr_s, {**fs, "f4": fs["f1"]}, gt, feats_t=ft)
    with pytest.raises(ValueError, match=r"student features have no positions \['f3'\]"):
        Distiller(loss=ATLoss)(sr_s, {"f1": fs["f1"], "f2": fs["f2"]}, gt, feats_t=ft)
    with pytest.raises(ValueError, match=r"gt \(2, 3, 5, 6\)"):
        Distiller()(sr_s, None, gt[..., :5, :6])


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match=r"position_weights has 2 entries but there are 3 positions"):
        Distiller(loss=ATLoss, position_weights=(1.0, 2.0))
    with pytest.raises(ValueError, match=r"teacher_channels has no entry for positions \['f3'\]"):
        Distiller(loss=FitNetLoss, student_channels=S_CH, teacher_channels={"f1": 8, "f2": 4})
    with pytest.raises(ValueError, match="positions must be unique"):
        Distiller(loss=ATLoss, positions=("f1", "f1"))
    with pytest.raises(ValueError, match="needs `channels` but the Distiller was given no teacher_channels"):
        Distiller(loss=LearnableLoss)
    with pytest.raises(ValueError, match="this KD loss is pairwise"):
        Distiller(loss=FSPLoss, position_weights=(1.0, 1.0, 1.0))


def test_every_loss_gets_both_widths_by_keyword() -> None:
    d = Distiller(
        loss=functools.partial(LearnableLoss, gain=2.0), student_channels=S_CH, teacher_channels=T_CH
    )
    assert [d.kd_losses[p].channels for p in POS] == [8, 4, 12]
    assert [d.kd_losses[p].student_channels for p in POS] == [4, 4, 6]
    assert d.meta_parameters() == [d.kd_losses[p].scale for p in POS]
    assert isinstance(d.adapters["f1"], nn.Conv2d) and isinstance(d.adapters["f2"], nn.Identity)
    fakd = Distiller(loss=FAKDLoss).kd_losses["f1"]
    assert (fakd.channels, fakd.student_channels) == (None, None)  # widths not given: None, never left out
    partial = Distiller(loss=functools.partial(FAKDLoss, eps=1e-6), teacher_channels=T_CH).kd_losses["f3"]
    assert (partial.eps, partial.channels, partial.student_channels) == (1e-6, 12, None)


class PlainModuleLoss(nn.Module):
    needs_adapter = True

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        return (f_s - f_t).abs().mean()


@pytest.mark.parametrize(
    ("loss", "name"),
    [(PlainModuleLoss, "PlainModuleLoss"), (functools.partial(fakd_loss, eps=1e-6), "fakd_loss")],
)
def test_a_kd_loss_must_subclass_kdloss(loss, name) -> None:
    with pytest.raises(ValueError, match=f"must be a subclass of meta_kd_sr.distill.KDLoss .*got {name}: "):
        Distiller(loss=loss)


def test_prepared_inputs_give_the_same_terms() -> None:
    torch.manual_seed(0)
    d = Distiller(
        loss=functools.partial(KRNetLoss, n_kernels=3, hidden=5), student_channels=S_CH, teacher_channels=T_CH
    ).double()
    sr_s, _, gt = (t.double() for t in _images(19))
    fs, ft = (
        {k: v.double() for k, v in f.items()} for f in (_feats(S_CH, 20, True), _feats(T_CH, 21, False))
    )
    prepared = d.prepare(fs, ft)
    assert set(prepared) == set(POS) and not any(t.requires_grad for t in prepared.values())
    assert [t.shape[1] for t in prepared.values()] == [S_CH[p] + 1 for p in POS]  # F_S and cosine R
    fresh, reused = d(sr_s, fs, gt, feats_t=ft), d(sr_s, fs, gt, feats_t=ft, prepared=prepared)
    assert all(torch.equal(fresh[k], reused[k]) for k in fresh)
    assert Distiller(loss=FAKDLoss).prepare(fs, ft) == {} and Distiller().prepare(fs, ft) == {}


def test_learnable_loss_gets_raw_student_and_meta_gradient() -> None:
    sr_s, _, gt = _images(13)
    fs, ft = _feats(S_CH, 14, True), _feats(T_CH, 15, False)
    d = Distiller(loss=LearnableLoss, student_channels=S_CH, teacher_channels=T_CH, kd_weight=0.25)
    terms = d.kd_terms(fs, ft)
    assert [d.kd_losses[p].raw_shapes[-1] for p in POS] == [tuple(fs[p].shape) for p in POS]
    grads = torch.autograd.grad(terms["loss_kd"], d.meta_parameters())
    assert all(g.abs().sum() > 0 for g in grads)
    out = d(sr_s, fs, gt, feats_t=ft)
    torch.testing.assert_close(out["loss"], out["loss_rec"] + 0.25 * out["loss_kd"])


def test_fsp_is_pairwise_single_instance_with_adapters() -> None:
    sr_s, _, gt = _images(16)
    fs, ft = _feats(S_CH, 17, True), _feats(T_CH, 18, False)
    d = Distiller(loss=FSPLoss, student_channels=S_CH, teacher_channels=T_CH, kd_weight=2.0)
    assert list(d.kd_losses) == ["pairwise"] and isinstance(d.adapters["f3"], nn.Conv2d)
    out = d(sr_s, fs, gt, feats_t=ft)
    assert not any(k.startswith("loss_kd_") for k in out)
    with torch.no_grad():
        expected = fsp_loss([d.adapters[p](fs[p]) for p in POS], [ft[p] for p in POS])
    torch.testing.assert_close(out["loss_kd"], expected)
    torch.testing.assert_close(out["loss"], (sr_s - gt).abs().mean() + 2.0 * expected)
    out["loss"].backward()
    assert all(p.grad.abs().sum() > 0 for p in d.student_side_parameters())


def _fakd_reference(sr_s, sr_t, gt, feats_s, feats_t) -> torch.Tensor:
    """FAKD's objective as its code computes it: 0.5/0.5 L1 terms on images in [0, 255] (EDSR-PyTorch's
    ``rgb_range``) plus 10 x the L1 between spatial affinities of per-pixel normalised features."""

    def affinity(f: torch.Tensor) -> torch.Tensor:
        f = f.flatten(2)
        f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-7)
        return f.transpose(1, 2) @ f

    rec = (255 * sr_s - 255 * gt).abs().mean()
    out = (255 * sr_s - 255 * sr_t).abs().mean()
    feat = sum((affinity(feats_s[p]) - affinity(feats_t[p])).abs().mean() for p in POS)
    return 0.5 * rec + 0.5 * out + 10 * feat


def test_fakd_preset_keeps_fakds_balance_with_images_in_0_1() -> None:
    # Our images are in [0, 1], FAKD's in [0, 255]: the preset's gradients must be FAKD's divided by 255,
    # not an affinity term 255x too strong against the L1 terms.
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from meta_kd_sr.cli import config_dir

    preset = OmegaConf.load(f"{config_dir()}/distill/fakd.yaml")
    distiller = instantiate(preset)
    sr_s, sr_t, gt = (x.double().detach().requires_grad_(i == 0) for i, x in enumerate(_images(4)))
    fs = {k: (255 * v).double().detach().requires_grad_() for k, v in _feats(S_CH, 5, False).items()}
    ft = {k: (255 * v).double() for k, v in _feats(T_CH, 6, False).items()}
    ours = distiller(sr_s, fs, gt, sr_t=sr_t, feats_t=ft)["loss"]
    grads = torch.autograd.grad(ours, [sr_s, *fs.values()])
    ref = torch.autograd.grad(_fakd_reference(sr_s, sr_t, gt, fs, ft), [sr_s, *fs.values()])
    for g, r in zip(grads, ref):
        torch.testing.assert_close(255 * g, r, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(255 * ours, _fakd_reference(sr_s, sr_t, gt, fs, ft), rtol=1e-6, atol=0)
