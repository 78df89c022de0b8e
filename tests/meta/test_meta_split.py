"""The split inner objective (fixed, meta): same meta-gradient, and the fixed part's gradients returned."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from meta_setup import build_setup, hand_sgd_meta_grad, rel_err

from meta_kd_sr.meta import PseudoStep, meta_gradient

ENGINES = ("higher", "func")


def split_loss(s):
    def inner(sr, feats):
        return F.l1_loss(sr, s.gt), sum(s.krnets[k](feats[k], s.feats_t[k]) for k in s.krnets)

    return inner


def warm_adam(s, steps=3):
    opt = torch.optim.Adam(s.student.parameters(), lr=0.02, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        F.l1_loss(s.student(s.lq), s.gt).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


@pytest.mark.parametrize("engine", ENGINES)
def test_split_equals_hand_formula_and_returns_fixed_grads(engine) -> None:
    s = build_setup()
    alpha = 0.3
    args = (s.student, s.meta_params, split_loss(s), s.lq, s.meta_lq, s.meta_gt)
    result = meta_gradient(*args, pseudo=PseudoStep(alpha=alpha), engine=engine)
    n = len(list(s.student.parameters()))
    assert rel_err(result.grads, hand_sgd_meta_grad(s, [alpha] * n)) < 1e-10
    expected = torch.autograd.grad(F.l1_loss(s.student(s.lq), s.gt), list(s.student.parameters()))
    assert rel_err(result.fixed_grads, expected) < 1e-14
    assert all(not g.requires_grad for g in result.fixed_grads)
    assert meta_gradient(*s.args(), engine=engine).fixed_grads is None


@pytest.mark.parametrize("engine", ENGINES)
def test_split_equals_scalar_with_frozen_layer_adam_state_and_reduce(engine) -> None:
    s = build_setup()
    s.student.head.bias.requires_grad_(False)
    opt = warm_adam(s)

    def reduce(grads):
        return [0.5 * g for g in grads]

    kw = {"optimizer": opt, "pseudo": PseudoStep("adam_state"), "engine": engine, "grad_reduce": reduce}
    split = meta_gradient(s.student, s.meta_params, split_loss(s), s.lq, s.meta_lq, s.meta_gt, **kw)
    scalar = meta_gradient(*s.args(), **kw)
    assert rel_err(split.grads, scalar.grads) < 1e-10
    assert len(split.fixed_grads) == len([p for p in s.student.parameters() if p.requires_grad])


@pytest.mark.parametrize("engine", ENGINES)
def test_parameters_after_the_last_feature_enter_theta_prime_as_constants(engine) -> None:
    # only f1 is distilled: body and tail gradients do not depend on phi, the meta-gradient is unchanged
    s = build_setup()
    s.krnets = torch.nn.ModuleDict({"f1": s.krnets["f1"]})
    split = meta_gradient(s.student, s.meta_params, split_loss(s), s.lq, s.meta_lq, s.meta_gt, engine=engine)
    assert rel_err(split.grads, meta_gradient(*s.args(), engine=engine).grads) < 1e-10
    assert rel_err(split.grads, hand_sgd_meta_grad(s, [0.1] * 6)) < 1e-10


def test_bad_inner_loss_output() -> None:
    s = build_setup()
    with pytest.raises(ValueError, match="inner_loss must return a scalar tensor or a pair"):
        meta_gradient(s.student, s.meta_params, lambda sr, f: [sr.sum()], s.lq, s.meta_lq, s.meta_gt)
