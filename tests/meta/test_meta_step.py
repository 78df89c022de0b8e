"""The meta step: engines higher == torch.func == reference (create_graph) == hand formula, float64."""

from __future__ import annotations

import copy
import re

import higher
import pytest
import torch
import torch.nn.functional as F

from helpers.meta_setup import build_setup, hand_sgd_meta_grad, inner_grads, meta_loss_grad_at, rel_err
from meta_kd_sr.meta import PseudoStep, meta_gradient

ENGINES = ("higher", "func", "reference")


@pytest.fixture
def setup64():
    return build_setup()


@pytest.mark.parametrize("engine", ENGINES)
def test_sgd_meta_gradient_equals_hand_formula(setup64, engine) -> None:
    alpha = 0.3
    result = meta_gradient(*setup64.args(), pseudo=PseudoStep("sgd", alpha=alpha), engine=engine)
    n = len(list(setup64.student.parameters()))
    expected = hand_sgd_meta_grad(setup64, [alpha] * n)
    assert rel_err(result.grads, expected) < 1e-10
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in result.grads)
    fresh = F.l1_loss(setup64.student(setup64.meta_lq), setup64.meta_gt)
    assert result.meta_loss.requires_grad is False and result.meta_loss != fresh  # evaluated at theta'


def test_engines_agree_with_a_frozen_student_layer(setup64) -> None:
    setup64.student.head.requires_grad_(False)
    # f1 = head(lq) no longer depends on a trainable weight, so the f1 KRNet cannot move theta'.
    n_f1 = len(list(setup64.krnets["f1"].parameters()))
    with pytest.warns(UserWarning, match=re.escape(f"positions {list(range(n_f1))} get no")):
        a, b, c = [meta_gradient(*setup64.args(), engine=e).grads for e in ENGINES]
    assert rel_err(a, b) < 1e-10 and rel_err(a, c) < 1e-10
    assert all(g.abs().sum() == 0 for g in a[:n_f1]) and flat_norm(a[n_f1:]) > 0


def flat_norm(grads) -> float:
    return torch.cat([g.reshape(-1) for g in grads]).norm().item()


@pytest.mark.parametrize("engine", ENGINES)
def test_sgd_lr_uses_each_group_current_lr(setup64, engine) -> None:
    student = setup64.student
    head = list(student.head.parameters())
    rest = [p for n, p in student.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.SGD([{"params": head, "lr": 0.05}, {"params": rest}], lr=0.2)
    factor = 1.5
    result = meta_gradient(
        *setup64.args(), optimizer=opt, pseudo=PseudoStep("sgd_lr", lr_factor=factor), engine=engine
    )
    alphas = [factor * (0.05 if n.startswith("head.") else 0.2) for n, _ in student.named_parameters()]
    assert rel_err(result.grads, hand_sgd_meta_grad(setup64, alphas)) < 1e-10


def warm_adam(s, cls=torch.optim.Adam, steps=3, **kw):
    opt = cls(s.student.parameters(), lr=0.02, **kw)
    for _ in range(steps):
        opt.zero_grad()
        F.l1_loss(s.student(s.lq), s.gt).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def hand_adam(params, grads, opt, lr_factor=1.0):
    """torch.optim.Adam/AdamW's update rule as documented, from opt's state, differentiable in grads."""
    out = []
    for p, g in zip(params, grads):
        group = next(gr for gr in opt.param_groups if any(q is p for q in gr["params"]))
        st, (b1, b2), eps = opt.state[p], group["betas"], group["eps"]
        lr, wd, t = lr_factor * group["lr"], group["weight_decay"], float(st["step"]) + 1
        decoupled = isinstance(opt, torch.optim.AdamW)
        if not decoupled:
            g = g + wd * p
        m_hat = (b1 * st["exp_avg"] + (1 - b1) * g) / (1 - b1**t)
        v_hat = (b2 * st["exp_avg_sq"] + (1 - b2) * g * g) / (1 - b2**t)
        base = p * (1 - lr * wd) if decoupled else p
        out.append(base - lr * m_hat / (v_hat.sqrt() + eps))
    return out


def test_hand_adam_is_the_real_optimizers_next_step(setup64) -> None:
    opt = warm_adam(setup64, weight_decay=1e-3)
    params = list(setup64.student.parameters())
    g = [x.detach() for x in inner_grads(setup64)]
    expected = hand_adam(params, g, opt)
    student, real = copy.deepcopy((setup64.student, opt))
    for p, gi in zip(student.parameters(), g):
        p.grad = gi.clone()
    real.step()
    assert rel_err([p.detach() - q for p, q in zip(student.parameters(), params)],
                   [e.detach() - q for e, q in zip(expected, params)]) < 1e-9  # fmt: skip


@pytest.mark.parametrize(
    ("cls", "engine", "wd"),
    [
        (torch.optim.Adam, "higher", 1e-3),
        (torch.optim.Adam, "func", 1e-3),
        (torch.optim.Adam, "reference", 1e-3),
        (torch.optim.AdamW, "func", 1e-2),
        (torch.optim.AdamW, "reference", 1e-2),
    ],
)
def test_adam_state_meta_gradient_equals_hand_adam_step(setup64, cls, engine, wd) -> None:
    opt = warm_adam(setup64, cls, weight_decay=wd)
    state_before = copy.deepcopy(opt.state_dict())
    pseudo = PseudoStep("adam_state", lr_factor=0.5)
    result = meta_gradient(*setup64.args(), optimizer=opt, pseudo=pseudo, engine=engine)
    params = list(setup64.student.parameters())
    new = hand_adam(params, inner_grads(setup64), opt, lr_factor=0.5)
    v = meta_loss_grad_at(setup64.student, new, setup64.meta_lq, setup64.meta_gt)
    expected = torch.autograd.grad(sum((n * vi).sum() for n, vi in zip(new, v)), setup64.meta_params)
    assert rel_err(result.grads, expected) < 1e-10
    # the real optimizer's state is read, never advanced
    after = opt.state_dict()
    for k, st in state_before["state"].items():
        assert all(torch.equal(st[name], after["state"][k][name]) for name in st)


def test_adam_state_engines_agree(setup64) -> None:
    opt = warm_adam(setup64, weight_decay=1e-3)
    pseudo = PseudoStep("adam_state")
    a, b, c = (meta_gradient(*setup64.args(), optimizer=opt, pseudo=pseudo, engine=e).grads for e in ENGINES)
    assert rel_err(a, b) < 1e-10 and rel_err(a, c) < 1e-10 and flat_norm(a) > 0


@pytest.mark.parametrize("engine", ENGINES)
def test_grad_reduce_is_applied_before_the_update(setup64, engine) -> None:
    calls = []

    def half(grads):
        calls.append(len(grads))
        return [0.5 * g for g in grads]

    alpha = 0.3
    result = meta_gradient(*setup64.args(), pseudo=PseudoStep(alpha=alpha), engine=engine, grad_reduce=half)
    n = len(list(setup64.student.parameters()))
    assert calls == [n]
    # theta' = theta - alpha * 0.5 * g: the meta-gradient of a pseudo step with alpha / 2
    assert rel_err(result.grads, hand_sgd_meta_grad(setup64, [alpha / 2] * n)) < 1e-10


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["sgd", "adam_state"])
def test_real_student_parameters_are_unchanged(setup64, engine, kind) -> None:
    opt = warm_adam(setup64)
    before = [p.detach().clone() for p in setup64.student.parameters()]
    meta_gradient(*setup64.args(), optimizer=opt, pseudo=PseudoStep(kind), engine=engine)
    assert all(torch.equal(a, b) for a, b in zip(before, setup64.student.parameters()))
    assert all(p.grad is None for p in setup64.student.parameters())


@pytest.mark.parametrize("engine", ENGINES)
def test_inner_gradient_serves_the_real_step_after_the_krnet_step(setup64, engine) -> None:
    s = setup64
    result = meta_gradient(*s.args(), engine=engine)
    params = list(s.student.parameters())
    at_theta = torch.autograd.grad(s.inner_loss(*s.student(s.lq, return_feats=True)), params)
    assert rel_err(result.inner.value, at_theta) < 1e-14
    with torch.no_grad():  # a KRNet optimizer step changes phi before the real student step
        for p, g in zip(s.meta_params, result.grads):
            p -= 10.0 * g
    leaves, (sr, feats) = result.inner.leaves()
    assert torch.equal(sr, s.student(s.lq)) and not any(t.grad_fn for t in leaves)
    output_grads = torch.autograd.grad(s.inner_loss(sr, feats), leaves, allow_unused=True)
    reused = result.inner.at(output_grads)
    fresh = torch.autograd.grad(s.inner_loss(*s.student(s.lq, return_feats=True)), params)
    assert rel_err(reused, fresh) < 1e-12 and rel_err(fresh, at_theta) > 1e-6


@pytest.mark.parametrize("kind", ["sgd", "sgd_lr", "adam_state"])
def test_carried_engines_equal_the_reference_engine(setup64, kind) -> None:
    # the reference engine is the definition: autograd.grad(create_graph=True), theta', reverse mode
    opt = warm_adam(setup64, weight_decay=1e-3)
    pseudo = PseudoStep(kind, alpha=0.2, lr_factor=2.0)
    reference = meta_gradient(*setup64.args(), optimizer=opt, pseudo=pseudo, engine="reference")
    assert flat_norm(reference.grads) > 0 and reference.trunk == []
    for engine in ("higher", "func"):
        result = meta_gradient(*setup64.args(), optimizer=opt, pseudo=pseudo, engine=engine)
        assert rel_err(result.grads, reference.grads) < 1e-10
        assert abs(result.meta_loss - reference.meta_loss) <= 1e-12 * reference.meta_loss
        assert len(result.trunk) == 3  # the carried features f1, f2, f3, recorded by the meta backward


def test_first_order_gives_no_meta_gradient(setup64) -> None:
    # Pins the fact that forces the second-order path: L_meta reaches phi only through theta'.
    s = setup64
    sgd = torch.optim.SGD(s.student.parameters(), lr=0.1)
    ctx = higher.innerloop_ctx(s.student, sgd, copy_initial_weights=False, track_higher_grads=False)
    with ctx as (fm, do):
        do.step(s.inner_loss(*fm(s.lq, return_feats=True)))
        meta_loss = F.l1_loss(fm(s.meta_lq), s.meta_gt)
    grads = torch.autograd.grad(meta_loss, s.meta_params, allow_unused=True)
    assert all(g is None for g in grads)


@pytest.mark.parametrize("engine", ["higher", "func"])
def test_float32_default_path_on_real_photos(photo_batch, engine) -> None:
    s = build_setup(torch.float32, channels=8, size=16, batch=4, seed=1, n_kernels=4, hidden=8)
    s.gt, s.meta_gt = photo_batch[:2, :, :32, :32], photo_batch[2:, :, 40:72, 40:72]
    s.lq, s.meta_lq = F.avg_pool2d(s.gt, 2), F.avg_pool2d(s.meta_gt, 2)
    with torch.no_grad():
        s.feats_t = build_setup(torch.float32, channels=8, seed=2).student(s.lq, return_feats=True)[1]
    result = meta_gradient(*s.args(), engine=engine)
    assert result.meta_loss.dtype == torch.float32 and torch.isfinite(result.meta_loss)
    assert all(torch.isfinite(g).all() for g in result.grads) and flat_norm(result.grads) > 0
    reference = meta_gradient(*s.args(), engine="func" if engine == "higher" else "higher").grads
    assert rel_err(result.grads, reference) < 1e-4
