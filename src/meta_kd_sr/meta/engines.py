"""The two engines of the differentiable pseudo step: ``higher`` and its ``torch.func`` twin.

Both form theta_1 = theta - step(g) from the pseudo-step gradient g, whose graph to phi is kept (exact second
order; ``meta_kd_sr.meta.carried``), and return the meta loss at theta'. With an ``Unroll`` (K > 1 pseudo
steps) they go on from theta_1: theta_(k+1) = theta_k - step(grad inner_loss(theta_k)), each gradient taken
with its graph (``create_graph``: theta_k depends on phi, so its Jacobian does too), and theta' = theta_K.
They must agree to rounding; ``meta_kd_sr.meta.step.meta_gradient`` is the public entry point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import higher
import torch
from torch import Tensor, nn
from torch.func import functional_call

GradReduce = Callable[[list[Tensor]], Sequence[Tensor]]
InnerLoss = Callable[[Tensor, dict[str, Tensor]], Tensor]


@dataclass
class Unroll:
    """The pseudo steps after the first, for K > 1.

    Attributes:
        inner_loss: ``(sr, feats) -> scalar``, the distillation objective on the train batch.
        lq: (B, 3, h, w) the train batch: every step of the lookahead uses this same batch.
        steps: K - 1, the steps after the first.
    """

    inner_loss: InnerLoss
    lq: Tensor
    steps: int


@dataclass
class ParamStep:
    """How one trainable student parameter moves in the pseudo step.

    ``adam`` is None for an SGD step (p - lr * g); otherwise it holds the real optimizer's hyper-parameters
    and state for ``param``: betas, eps, weight_decay, decoupled (AdamW), step, exp_avg, exp_avg_sq.
    """

    name: str
    param: Tensor
    lr: float
    adam: dict | None = None


def _safe_sqrt(x: Tensor) -> Tensor:
    # sqrt with a zero (not infinite) derivative at 0, as higher masks exp_avg_sq == 0.
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def apply_step(step: ParamStep, grad: Tensor, param: Tensor | None = None) -> Tensor:
    """One differentiable update of ``step.param``; for Adam it is exactly ``torch.optim.Adam``'s next step.

    Args:
        step: the parameter and its update rule.
        grad: the parameter's (possibly reduced) gradient, graph attached.
        param: the value to update (an unrolled step's fast weight); default ``step.param``. SGD only.

    Returns:
        The updated parameter theta' (graph attached to theta and to ``grad``).
    """
    p, lr, a = step.param if param is None else param, step.lr, step.adam
    if a is None:
        return p - lr * grad
    beta1, beta2 = a["betas"]
    t = a["step"] + 1
    if a["weight_decay"] != 0 and not a["decoupled"]:
        grad = grad + a["weight_decay"] * p
    exp_avg = beta1 * a["exp_avg"] + (1 - beta1) * grad
    exp_avg_sq = beta2 * a["exp_avg_sq"] + (1 - beta2) * grad * grad
    denom = _safe_sqrt(exp_avg_sq) / math.sqrt(1 - beta2**t) + a["eps"]
    base = p * (1 - lr * a["weight_decay"]) if a["decoupled"] else p
    return base - (lr / (1 - beta1**t)) * exp_avg / denom


def reduce_grads(grads: Sequence[Tensor | None], params: Sequence[Tensor], grad_reduce: GradReduce | None):
    """Apply ``grad_reduce`` to the pseudo-step gradients before theta' is formed.

    Unused parameters (None gradients) enter the reduction as zeros, so every rank passes the same list to a
    collective, and leave it as None (no update), as higher does.
    """
    if grad_reduce is None:
        return list(grads)
    filled = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
    reduced = list(grad_reduce(filled))
    if len(reduced) != len(filled):
        raise ValueError(f"grad_reduce returned {len(reduced)} gradients for {len(filled)} parameters")
    return [None if g is None else r for g, r in zip(grads, reduced)]


def step_fast(
    fast: dict[str, Tensor],
    steps: list[ParamStep],
    grads: Sequence[Tensor | None],
    grad_reduce: GradReduce | None,
) -> None:
    """One differentiable pseudo step of the fast weights ``fast`` (name -> tensor), in place of the dict."""
    params = [s.param for s in steps]
    for step, grad in zip(steps, reduce_grads(grads, params, grad_reduce)):
        if grad is not None:
            fast[step.name] = apply_step(step, grad, fast[step.name])


def unroll_fast(
    student: nn.Module,
    fast: dict[str, Tensor],
    steps: list[ParamStep],
    unroll: Unroll | None,
    grad_reduce: GradReduce | None,
) -> None:
    """The steps after the first: theta_(k+1) = theta_k - step(grad inner_loss(theta_k)), graph kept."""
    if unroll is None:
        return
    for _ in range(unroll.steps):
        out = functional_call(student, fast, (unroll.lq,), {"return_feats": True})
        current = [fast[s.name] for s in steps]
        grads = torch.autograd.grad(unroll.inner_loss(*out), current, create_graph=True, allow_unused=True)
        step_fast(fast, steps, grads, grad_reduce)


def run_func(
    student: nn.Module,
    steps: list[ParamStep],
    grads: list[Tensor | None],
    meta_input: tuple[Tensor, Tensor],
    grad_reduce: GradReduce | None,
    meta_loss_fn: Callable[[Tensor, Tensor], Tensor],
    unroll: Unroll | None = None,
) -> Tensor:
    """The meta loss at theta' formed with ``torch.func.functional_call`` (see ``meta_gradient``).

    Args:
        student: the student (not changed).
        steps: the update rule of each trainable parameter.
        grads: the pseudo-step gradient per step (``carried.inner_gradient``), None where there is none.
        meta_input: ``(meta_lq, meta_gt)``.
        grad_reduce: applied to every step's gradients before the update (DDP), or None.
        meta_loss_fn: ``(sr, gt) -> scalar``.
        unroll: the pseudo steps after the first (K > 1), or None (one step).
    """
    fast: dict[str, Tensor] = dict(student.named_parameters())
    step_fast(fast, steps, grads, grad_reduce)
    unroll_fast(student, fast, steps, unroll, grad_reduce)
    meta_lq, meta_gt = meta_input
    return meta_loss_fn(functional_call(student, fast, (meta_lq,)), meta_gt)


def _diff_optimizer_source(steps: list[ParamStep]) -> torch.optim.Optimizer:
    """A torch optimizer over the trainable student parameters for higher to mirror, one group per parameter.

    higher adds eps to sqrt(v) before the bias correction, torch.optim.Adam after it; giving higher
    eps * sqrt(1 - beta2^t) makes its step equal Adam's. The state is copied (higher clones it) with a Python
    step count, so the bias corrections stay in the parameters' precision.
    """
    if steps[0].adam is None:
        return torch.optim.SGD([{"params": [s.param], "lr": s.lr} for s in steps], lr=steps[0].lr)
    groups = []
    adams = [s.adam or {} for s in steps]  # every step is an Adam step when the first one is
    for s, adam in zip(steps, adams):
        t = adam["step"] + 1
        eps = adam["eps"] * math.sqrt(1 - adam["betas"][1] ** t)
        groups.append(
            {
                "params": [s.param],
                "lr": s.lr,
                "betas": adam["betas"],
                "eps": eps,
                "weight_decay": adam["weight_decay"],
            }
        )
    opt = torch.optim.Adam(groups)
    for s, adam in zip(steps, adams):
        opt.state[s.param] = {k: adam[k] for k in ("step", "exp_avg", "exp_avg_sq")}
    return opt


def run_higher(
    student: nn.Module,
    steps: list[ParamStep],
    grads: list[Tensor | None],
    meta_input: tuple[Tensor, Tensor],
    grad_reduce: GradReduce | None,
    meta_loss_fn: Callable[[Tensor, Tensor], Tensor],
    unroll: Unroll | None = None,
) -> Tensor:
    """The meta loss at theta' formed with ``higher.innerloop_ctx`` (arguments as ``run_func``).

    higher's differentiable optimizer takes the gradient of the loss it is given. It is given the linear
    surrogate sum_i <theta_i, g_i>, whose gradient in theta is g exactly (value and graph to phi), so its
    SGD or Adam update builds theta_1 from the carried gradient. The steps after the first (``unroll``) are
    its plain differentiable steps on the inner loss of the patched student.
    """
    position = {id(p): i for i, p in enumerate(student.parameters())}
    index = [position[id(s.param)] for s in steps]
    params = [s.param for s in steps]

    def callback(all_grads: list[Tensor]) -> list[Tensor]:
        # higher passes one entry per student parameter (None for frozen ones): reduce the trainable ones.
        out: list[Any] = list(all_grads)
        for i, g in zip(index, reduce_grads([all_grads[i] for i in index], params, grad_reduce)):
            out[i] = g
        return out

    source = _diff_optimizer_source(steps)
    with higher.innerloop_ctx(student, source, copy_initial_weights=False, track_higher_grads=True) as (
        fmodel,
        diffopt,
    ):
        fast = list(fmodel.parameters())
        surrogate = cast(Tensor, sum((fast[i] * g).sum() for i, g in zip(index, grads) if g is not None))
        diffopt.step(surrogate, grad_callback=callback)
        if unroll is not None:
            for _ in range(unroll.steps):
                diffopt.step(unroll.inner_loss(*fmodel(unroll.lq, return_feats=True)), grad_callback=callback)
        meta_lq, meta_gt = meta_input
        sr_meta = fmodel(meta_lq)
    return meta_loss_fn(sr_meta, meta_gt)
