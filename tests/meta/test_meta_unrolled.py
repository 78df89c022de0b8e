"""K-step lookahead (meta.inner_steps): every engine == a hand-unrolled create_graph reference, float64."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.func import functional_call

from helpers.meta_setup import build_setup, rel_err, tiny_kd_module
from meta_kd_sr.meta import MetaSettings, PseudoStep, meta_gradient

ENGINES = ("higher", "func", "reference")


@pytest.fixture
def setup64():
    return build_setup()


def hand_unrolled(s, alphas, k: int, reduce=None):
    """K times theta <- theta - alpha * grad inner_loss(theta), create_graph; then dL_meta(theta_K)/dphi."""
    names = [n for n, _ in s.student.named_parameters()]
    theta = [p for p in s.student.parameters()]
    for _ in range(k):
        sr, feats = functional_call(s.student, dict(zip(names, theta)), (s.lq,), {"return_feats": True})
        grads = list(torch.autograd.grad(s.inner_loss(sr, feats), theta, create_graph=True))
        grads = reduce(grads) if reduce is not None else grads
        theta = [t - a * g for t, a, g in zip(theta, alphas, grads)]
    sr_meta = functional_call(s.student, dict(zip(names, theta)), (s.meta_lq,))
    meta_loss = torch.nn.functional.l1_loss(sr_meta, s.meta_gt)
    return meta_loss.detach(), torch.autograd.grad(meta_loss, s.meta_params)


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("engine", ENGINES)
def test_k_step_meta_gradient_equals_the_hand_unrolled_reference(setup64, engine, k) -> None:
    alpha = 0.3
    pseudo = PseudoStep("sgd", alpha=alpha, inner_steps=k)
    result = meta_gradient(*setup64.args(), pseudo=pseudo, engine=engine)
    n = len(list(setup64.student.parameters()))
    loss, expected = hand_unrolled(setup64, [alpha] * n, k)
    assert rel_err(result.grads, expected) < 1e-10
    assert abs(result.meta_loss - loss) <= 1e-12 * loss
    one_step = meta_gradient(*setup64.args(), pseudo=PseudoStep("sgd", alpha=alpha), engine=engine)
    assert rel_err(result.grads, one_step.grads) > 1e-3  # the lookahead changes the meta-gradient


@pytest.mark.parametrize("k", [2, 4])
def test_k_step_engines_agree_with_each_other(setup64, k) -> None:
    pseudo = PseudoStep("sgd", alpha=0.5, inner_steps=k)
    a, b, c = (meta_gradient(*setup64.args(), pseudo=pseudo, engine=e).grads for e in ENGINES)
    assert rel_err(a, c) < 1e-10 and rel_err(b, c) < 1e-10
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in c)


@pytest.mark.parametrize("engine", ENGINES)
def test_k_step_sgd_lr_and_grad_reduce_apply_at_every_step(setup64, engine) -> None:
    student = setup64.student
    head = list(student.head.parameters())
    rest = [p for n, p in student.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.SGD([{"params": head, "lr": 0.05}, {"params": rest}], lr=0.2)
    calls = []

    def half(grads):
        calls.append(len(grads))
        return [0.5 * g for g in grads]

    pseudo = PseudoStep("sgd_lr", lr_factor=1.5, inner_steps=3)
    result = meta_gradient(*setup64.args(), optimizer=opt, pseudo=pseudo, engine=engine, grad_reduce=half)
    alphas = [1.5 * (0.05 if n.startswith("head.") else 0.2) for n, _ in student.named_parameters()]
    _, expected = hand_unrolled(setup64, alphas, 3, reduce=lambda gs: [0.5 * g for g in gs])
    assert rel_err(result.grads, expected) < 1e-10
    assert calls == [len(alphas)] * 3


@pytest.mark.parametrize("engine", ENGINES)
def test_k_steps_leave_the_student_and_reuse_the_first_step_for_the_real_step(setup64, engine) -> None:
    s = setup64
    before = [p.detach().clone() for p in s.student.parameters()]
    result = meta_gradient(*s.args(), pseudo=PseudoStep(alpha=0.3, inner_steps=2), engine=engine)
    assert all(torch.equal(a, b) for a, b in zip(before, s.student.parameters()))
    assert all(p.grad is None for p in s.student.parameters())
    params = list(s.student.parameters())
    at_theta = torch.autograd.grad(s.inner_loss(*s.student(s.lq, return_feats=True)), params)
    assert rel_err(result.inner.value, at_theta) < 1e-14  # the real step's gradient is taken at theta


def test_adam_state_with_several_inner_steps_is_refused() -> None:
    with pytest.raises(ValueError, match=r"adam_state takes the real optimizer's next step only, .*=2"):
        PseudoStep("adam_state", inner_steps=2)
    with pytest.raises(ValueError, match=r"adam_state .*inner_steps=3"):
        MetaSettings(pseudo="adam_state", warmup_steps=1, inner_steps=3)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=r"meta.inner_steps must be an integer >= 1, got"):
            MetaSettings(inner_steps=bad)
    assert MetaSettings(inner_steps=4).step_settings.inner_steps == 4


@pytest.mark.parametrize("engine", ["higher", "func"])
def test_module_iteration_with_k_steps_equals_the_steps_written_out(engine) -> None:
    module = tiny_kd_module(engine, n_blocks=3, teacher_feats=10)
    module.meta = MetaSettings(**{**module.meta.as_dict(), "inner_steps": 2})
    reference = copy.deepcopy(module)
    gen = torch.Generator().manual_seed(0)
    lq, meta_lq = torch.rand(2, 2, 3, 8, 8, dtype=torch.float64, generator=gen)
    gt, meta_gt = torch.rand(2, 2, 3, 16, 16, dtype=torch.float64, generator=gen)
    module.iteration(
        {"train": {"lq": lq, "gt": gt}, "meta": {"lq": meta_lq, "gt": meta_gt}}, *optimizers(module)
    )
    opt_s, opt_k = optimizers(reference)
    d = reference.distiller
    with torch.no_grad():
        sr_t, feats_t = reference.teacher(lq, return_feats=True)

    def inner(sr, feats):  # the KRNets build their inputs from the features they are given, at every theta_k
        return d(sr, feats, gt, sr_t=sr_t, feats_t=feats_t)["loss"]

    pseudo = PseudoStep(alpha=0.5, inner_steps=2)
    result = meta_gradient(reference.student, d.meta_parameters(), inner, lq, meta_lq, meta_gt, pseudo=pseudo)
    for p, g in zip(d.meta_parameters(), result.grads):
        p.grad = g
    opt_k.step()
    opt_s.zero_grad()
    d.kd_losses.requires_grad_(False)
    inner(*reference.student(lq, return_feats=True)).backward()
    opt_s.step()
    moved = [p.detach() for p in module.parameters()]
    assert rel_err(moved, [p.detach() for p in reference.parameters()]) < 1e-9


def optimizers(module):
    return [entry["optimizer"] for entry in module.configure_optimizers()]
