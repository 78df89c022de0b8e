"""The carried inner gradient: g(phi) by one plain backward, its phi-derivative by a forward-mode pass."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.meta_setup import build_setup, hand_sgd_meta_grad, rel_err
from meta_kd_sr.distill import Distiller, KRNetLoss
from meta_kd_sr.meta import PseudoStep, meta_gradient
from meta_kd_sr.meta.carried import inner_gradient, reached_leaves
from meta_kd_sr.models import accepts_features_only
from meta_kd_sr.models.edsr import EDSR
from meta_kd_sr.models.rcan import RCAN

ENGINES = ("higher", "func", "reference")


def jvp_by_double_backward(outputs_fn, params, tangents):
    """J w through reverse mode twice: d/du <J^T u, w> at u = 0 (independent of torch.func)."""
    outs = outputs_fn()
    us = [torch.zeros_like(o, requires_grad=True) for o in outs]
    vjp = torch.autograd.grad(outs, params, us, create_graph=True, allow_unused=True)
    dot = sum((v * w).sum() for v, w in zip(vjp, tangents) if v is not None)
    return torch.autograd.grad(dot, us, allow_unused=True)


@pytest.mark.parametrize("engine", ENGINES)
def test_only_the_distilled_part_is_carried(engine) -> None:
    # only f1 is distilled: the gradients of body and tail do not depend on phi and stay constants
    s = build_setup()
    s.krnets = nn.ModuleDict({"f1": s.krnets["f1"]})
    params = list(s.student.named_parameters())
    inner, grads = inner_gradient(s.student, s.inner_loss, s.lq, params, s.meta_params)
    assert inner.carried == ["f1"]
    assert [inner.names[i] for i in inner.reached] == ["head.weight", "head.bias"]
    assert [g.requires_grad for g in grads] == [True, True, False, False, False, False]
    result = meta_gradient(*s.args(), engine=engine)
    assert rel_err(result.grads, hand_sgd_meta_grad(s, [0.1] * 6)) < 1e-10


def test_jvp_equals_a_double_backward_reference() -> None:
    s = build_setup()
    params = list(s.student.named_parameters())
    inner, _ = inner_gradient(s.student, s.inner_loss, s.lq, params, s.meta_params)
    assert inner.carried == ["f1", "f2", "f3"] and len(inner.reached) == 4
    torch.manual_seed(3)
    tangents = [torch.randn_like(inner.params[i]) for i in inner.reached]
    reached = [inner.params[i] for i in inner.reached]

    def feats():
        _, f = s.student(s.lq, return_feats=True)
        return [f[k] for k in inner.carried]

    assert rel_err(inner.jvp(tangents), jvp_by_double_backward(feats, reached, tangents)) < 1e-13


@pytest.mark.parametrize("net", ["edsr", "rcan"])
def test_real_networks_carry_their_features_without_the_upsampler(net) -> None:
    torch.manual_seed(0)
    student = (
        EDSR(2, n_feats=8, n_blocks=3)
        if net == "edsr"
        else RCAN(2, n_feats=8, n_groups=2, n_blocks=2, reduction=4)
    ).double()
    teacher = EDSR(2, n_feats=12, n_blocks=3).double()
    distiller = Distiller(
        loss=functools.partial(KRNetLoss, n_kernels=3, hidden=6),
        student_channels=student.feature_channels,
        teacher_channels=teacher.feature_channels,
        feature_scale=1 / 255,
    ).double()
    lq, gt = torch.rand(2, 3, 8, 8, dtype=torch.float64), torch.rand(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        sr_t, feats_t = teacher(lq, return_feats=True)
    assert all(torch.equal(feats_t[k], v) for k, v in teacher(lq, features_only=True).items())
    assert accepts_features_only(student)

    def loss(sr, feats):
        return distiller(sr, feats, gt, sr_t=sr_t, feats_t=feats_t)["loss"]

    named = list(student.named_parameters())
    inner, _ = inner_gradient(student, loss, lq, named, distiller.meta_parameters())
    reached = {inner.names[i].split(".")[0] for i in inner.reached}
    assert reached == {"conv_first", "body", "conv_after_body"}  # not upsample, conv_last
    with torch.no_grad():
        for p in distiller.meta_parameters():
            p.add_(0.1 * torch.randn_like(p))
    leaves, outs = inner.leaves()
    reused = inner.at(torch.autograd.grad(loss(*outs), leaves, allow_unused=True))
    fresh = torch.autograd.grad(loss(*student(lq, return_feats=True)), [p for _, p in named])
    assert rel_err(reused, fresh) < 1e-12


def test_inner_loss_must_read_the_student_through_its_outputs() -> None:
    s = build_setup()
    params = list(s.student.named_parameters())

    def weight_decay(sr, feats):
        return s.inner_loss(sr, feats) + s.student.head.weight.square().sum()

    with pytest.raises(ValueError, match="uses the student's parameters directly"):
        inner_gradient(s.student, weight_decay, s.lq, params, s.meta_params)
    with pytest.raises(ValueError, match="inner_loss must return a scalar tensor"):
        meta_gradient(
            s.student, s.meta_params, lambda sr, f: (sr.sum(), sr.sum()), s.lq, s.meta_lq, s.meta_gt
        )


def test_student_must_return_sr_and_feats() -> None:
    s = build_setup()

    class NoFeats(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = s.student

        def forward(self, lq, return_feats=False):
            return self.net(lq)

    with pytest.raises(ValueError, match=r"must return \(sr, feats\)"):
        meta_gradient(NoFeats(), s.meta_params, s.inner_loss, s.lq, s.meta_lq, s.meta_gt)


def test_reached_leaves_follows_shared_subgraphs_once() -> None:
    a, b, c = (torch.randn(3, requires_grad=True) for _ in range(3))
    h = a * 2
    for _ in range(60):  # a residual chain: without a visited set the walk would be exponential
        h = h + h.tanh()
    assert reached_leaves([h]) == {id(a)}
    assert reached_leaves([h, b * c, c]) == {id(a), id(b), id(c)}
    assert reached_leaves([torch.randn(2)]) == set()


@pytest.mark.parametrize("engine", ENGINES)
def test_adam_state_pseudo_step_with_the_carried_gradient(engine) -> None:
    # Adam's update is not linear in g: the JVP must receive the Adam Jacobian's product with v
    s = build_setup()
    opt = torch.optim.Adam(s.student.parameters(), lr=0.02)
    for _ in range(2):
        opt.zero_grad()
        F.l1_loss(s.student(s.lq), s.gt).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    a = meta_gradient(*s.args(), optimizer=opt, pseudo=PseudoStep("adam_state"), engine=engine).grads
    params = list(s.student.parameters())
    g = torch.autograd.grad(s.inner_loss(*s.student(s.lq, return_feats=True)), params, create_graph=True)
    new = []
    for p, gi in zip(params, g):
        st, (b1, b2) = opt.state[p], opt.param_groups[0]["betas"]
        t = float(st["step"]) + 1
        m = (b1 * st["exp_avg"] + (1 - b1) * gi) / (1 - b1**t)
        v = (b2 * st["exp_avg_sq"] + (1 - b2) * gi * gi) / (1 - b2**t)
        new.append(p - 0.02 * m / (v.sqrt() + 1e-8))
    fast = {n: q for (n, _), q in zip(s.student.named_parameters(), new)}
    meta_loss = F.l1_loss(torch.func.functional_call(s.student, fast, (s.meta_lq,)), s.meta_gt)
    assert rel_err(a, torch.autograd.grad(meta_loss, s.meta_params)) < 1e-10
