"""Bad inputs of the meta step, optimizer unwrapping and the DDP gradient helper."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.core.optimizer import LightningOptimizer

from helpers.meta_setup import build_setup, rel_err
from meta_kd_sr.meta import PseudoStep, ddp_grad_mean, meta_gradient


@pytest.fixture
def setup64():
    return build_setup()


def warm(opt, s, steps=1):
    for _ in range(steps):
        opt.zero_grad()
        F.l1_loss(s.student(s.lq), s.gt).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def test_unknown_engine(setup64) -> None:
    with pytest.raises(
        ValueError, match=r"engine must be one of \('higher', 'func', 'reference'\), got 'jax'"
    ):
        meta_gradient(*setup64.args(), engine="jax")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "adam"}, r"pseudo step kind must be one of \('sgd', 'sgd_lr', 'adam_state'\), got 'adam'"),
        ({"alpha": 0.0}, "alpha and lr_factor must be > 0, got 0.0 and 1.0"),
        ({"lr_factor": -1.0}, "alpha and lr_factor must be > 0, got 0.1 and -1.0"),
    ],
)
def test_bad_pseudo_step(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        PseudoStep(**kwargs)


def test_no_trainable_student_parameter_mentions_toggle_optimizer(setup64) -> None:
    setup64.student.requires_grad_(False)  # what Lightning's toggle_optimizer(krnet_opt) does
    with pytest.raises(ValueError, match="no student parameter requires grad.*toggle_optimizer"):
        meta_gradient(*setup64.args())


def decoupled_adam(params, **kw):
    return torch.optim.Adam(params, decoupled_weight_decay=True, **kw)


@pytest.mark.parametrize("cls", [torch.optim.AdamW, decoupled_adam])
def test_adamw_state_with_higher_is_rejected(setup64, cls) -> None:
    opt = warm(cls(setup64.student.parameters(), lr=1e-2, weight_decay=1e-2), setup64)
    with pytest.raises(ValueError, match="higher has no differentiable AdamW.*engine='func'"):
        meta_gradient(*setup64.args(), optimizer=opt, pseudo=PseudoStep("adam_state"), engine="higher")


def test_adam_state_needs_a_warm_adam(setup64) -> None:
    fresh = torch.optim.Adam(setup64.student.parameters())
    with pytest.raises(ValueError, match="student parameter 'head.weight' has none yet.*warm-up"):
        meta_gradient(*setup64.args(), optimizer=fresh, pseudo=PseudoStep("adam_state"))
    sgd = torch.optim.SGD(setup64.student.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="needs torch.optim.Adam or AdamW, got SGD"):
        meta_gradient(*setup64.args(), optimizer=sgd, pseudo=PseudoStep("adam_state"))
    amsgrad = warm(torch.optim.Adam(setup64.student.parameters(), amsgrad=True), setup64)
    with pytest.raises(ValueError, match="supports neither amsgrad=True nor maximize=True"):
        meta_gradient(*setup64.args(), optimizer=amsgrad, pseudo=PseudoStep("adam_state"))


def test_optimizer_problems(setup64) -> None:
    with pytest.raises(ValueError, match="pseudo kind 'sgd_lr' reads the real optimizer: pass optimizer="):
        meta_gradient(*setup64.args(), pseudo=PseudoStep("sgd_lr"))
    partial = torch.optim.SGD(setup64.student.head.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="student parameter 'body.weight' is not in the optimizer"):
        meta_gradient(*setup64.args(), optimizer=partial, pseudo=PseudoStep("sgd_lr"))
    with pytest.raises(ValueError, match="optimizer must be a torch.optim.Optimizer, got str"):
        meta_gradient(*setup64.args(), optimizer="adam", pseudo=PseudoStep("sgd_lr"))


def test_meta_loss_independent_of_meta_params_is_an_error(setup64) -> None:
    s = setup64

    def rec_only(sr, feats):
        return F.l1_loss(sr, s.gt)

    with pytest.raises(ValueError, match="does not depend on any meta parameter"):
        meta_gradient(s.student, s.meta_params, rec_only, s.lq, s.meta_lq, s.meta_gt)
    with pytest.raises(ValueError, match="non-empty list of tensors that require grad"):
        meta_gradient(s.student, [], s.inner_loss, s.lq, s.meta_lq, s.meta_gt)


def test_grad_reduce_must_keep_the_length(setup64) -> None:
    with pytest.raises(ValueError, match="grad_reduce returned 1 gradients for 6 parameters"):
        meta_gradient(*setup64.args(), engine="func", grad_reduce=lambda grads: grads[:1])


@pytest.mark.parametrize("engine", ["higher", "func", "reference"])
def test_lightning_optimizer_is_unwrapped(setup64, engine) -> None:
    opt = warm(torch.optim.Adam(setup64.student.parameters(), lr=1e-2), setup64, steps=2)
    pseudo = PseudoStep("adam_state")
    raw = meta_gradient(*setup64.args(), optimizer=opt, pseudo=pseudo, engine=engine).grads
    wrapped = meta_gradient(*setup64.args(), optimizer=LightningOptimizer(opt), pseudo=pseudo, engine=engine)
    assert rel_err(wrapped.grads, raw) == 0.0


def test_ddp_grad_mean_is_identity_without_distributed() -> None:
    assert not dist.is_initialized()
    grads = [torch.randn(3, 2), torch.randn(4)]
    out = ddp_grad_mean(world_size=4)(grads)
    assert all(a is b for a, b in zip(out, grads))
    with pytest.raises(ValueError, match="world_size must be >= 1, got 0"):
        ddp_grad_mean(0)


def test_ddp_grad_mean_is_a_differentiable_mean(tmp_path) -> None:
    # A one-process gloo group: the all-reduce sums one contribution, so world_size=2 must halve it.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        grads = [torch.randn(3, 2, requires_grad=True), torch.randn(4)]
        out = ddp_grad_mean(world_size=2)(grads)
        assert all(torch.equal(o, g / 2) and o.shape == g.shape for o, g in zip(out, grads))
        (d,) = torch.autograd.grad(out[0].sum(), grads[0])
        assert torch.equal(d, torch.full_like(d, 0.5))
        assert all(a is b for a, b in zip(ddp_grad_mean()(grads), grads))  # world of one: identity
    finally:
        dist.destroy_process_group()
