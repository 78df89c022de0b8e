"""The two engines of the differentiable pseudo step: ``higher`` and its ``torch.func`` twin.

Both compute theta' = theta - step(grad_theta inner_loss) with the graph kept (exact second order) and
return the meta loss at theta' together with the student's forward at theta. They must agree to rounding;
``meta_kd_sr.meta.step.meta_gradient`` is the public entry point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import higher
import torch
from torch import Tensor, nn
from torch.func import functional_call

GradReduce = Callable[[list[Tensor]], Sequence[Tensor]]
StudentOut = tuple[Tensor, dict[str, Tensor]]
InnerLoss = Callable[[Tensor, dict[str, Tensor]], "Tensor | tuple[Tensor, Tensor]"]
EngineOut = tuple[Tensor, StudentOut, "list[Tensor] | None"]


@dataclass
class ParamStep:
    """How one trainable student parameter moves in the pseudo step.

    ``adam`` is None for an SGD step (p - lr * g); otherwise it holds the real optimizer's hyper-parameters
    and state for ``param``: betas, eps, weight_decay, decoupled (AdamW), step, exp_avg, exp_avg_sq.
    """

    name: str
    param: nn.Parameter
    lr: float
    adam: dict | None = None


def _safe_sqrt(x: Tensor) -> Tensor:
    # sqrt with a zero (not infinite) derivative at 0, as higher masks exp_avg_sq == 0.
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def apply_step(step: ParamStep, grad: Tensor) -> Tensor:
    """One differentiable update of ``step.param``; for Adam it is exactly ``torch.optim.Adam``'s next step.

    Args:
        step: the parameter and its update rule.
        grad: the parameter's (possibly reduced) gradient, graph attached.

    Returns:
        The updated parameter theta' (graph attached to theta and to ``grad``).
    """
    p, lr, a = step.param, step.lr, step.adam
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


def split_losses(losses: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor | None, Tensor]:
    """``(fixed, meta)`` from what ``inner_loss`` returned: a scalar is all ``meta``."""
    if isinstance(losses, Tensor):
        return None, losses
    if isinstance(losses, (tuple, list)) and len(losses) == 2 and all(isinstance(x, Tensor) for x in losses):
        return losses[0], losses[1]
    raise ValueError(
        f"inner_loss must return a scalar tensor or a pair (fixed, meta) of them, got {type(losses).__name__}"
    )


def fixed_gradients(fixed: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """Gradients of ``fixed`` without a graph (it does not depend on phi); zeros where it is unused."""
    # retain_graph: the meta part's gradient and the real student step still need the student forward.
    grads = torch.autograd.grad(fixed, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def combine(
    fixed_grads: list[Tensor] | None, meta_grads: Sequence[Tensor | None]
) -> tuple[list[Tensor | None], set[int]]:
    """Pseudo-step gradients fixed + meta, and the positions ``meta`` does not reach.

    Those positions do not depend on phi, so their theta' can enter the meta forward as a constant.
    """
    if fixed_grads is None:
        return list(meta_grads), set()
    grads = [f if m is None else f + m for f, m in zip(fixed_grads, meta_grads)]
    return grads, {j for j, m in enumerate(meta_grads) if m is None}


def run_func(
    student: nn.Module,
    steps: list[ParamStep],
    inner_loss: InnerLoss,
    lq: Tensor,
    meta_input: tuple[Tensor, Tensor],
    grad_reduce: GradReduce | None,
    meta_loss_fn: Callable[[Tensor, Tensor], Tensor],
) -> EngineOut:
    """Pseudo step and meta loss with ``torch.func.functional_call`` (see ``meta_gradient``)."""
    student_out = student(lq, return_feats=True)
    params = [s.param for s in steps]
    fixed, meta = split_losses(inner_loss(*student_out))
    fixed_grads = None if fixed is None else fixed_gradients(fixed, params)
    meta_grads = torch.autograd.grad(meta, params, create_graph=True, allow_unused=True)
    grads, constant = combine(fixed_grads, meta_grads)
    grads = reduce_grads(grads, params, grad_reduce)
    fast = dict(student.named_parameters())
    for j, (step, grad) in enumerate(zip(steps, grads)):
        if grad is not None:
            new = apply_step(step, grad)
            fast[step.name] = new.detach() if j in constant else new
    meta_lq, meta_gt = meta_input
    sr_meta = functional_call(student, fast, (meta_lq,), {"return_feats": True})[0]
    return meta_loss_fn(sr_meta, meta_gt), student_out, fixed_grads


def _diff_optimizer_source(steps: list[ParamStep]) -> torch.optim.Optimizer:
    """A torch optimizer over the trainable student parameters for higher to mirror, one group per parameter.

    higher adds eps to sqrt(v) before the bias correction, torch.optim.Adam after it; giving higher
    eps * sqrt(1 - beta2^t) makes its step equal Adam's. The state is copied (higher clones it) with a Python
    step count, so the bias corrections stay in the parameters' precision.
    """
    if steps[0].adam is None:
        return torch.optim.SGD([{"params": [s.param], "lr": s.lr} for s in steps], lr=steps[0].lr)
    groups = []
    for s in steps:
        t = s.adam["step"] + 1
        eps = s.adam["eps"] * math.sqrt(1 - s.adam["betas"][1] ** t)
        groups.append(
            {
                "params": [s.param],
                "lr": s.lr,
                "betas": s.adam["betas"],
                "eps": eps,
                "weight_decay": s.adam["weight_decay"],
            }
        )
    opt = torch.optim.Adam(groups)
    for s in steps:
        opt.state[s.param] = {k: s.adam[k] for k in ("step", "exp_avg", "exp_avg_sq")}
    return opt


def run_higher(
    student: nn.Module,
    steps: list[ParamStep],
    inner_loss: InnerLoss,
    lq: Tensor,
    meta_input: tuple[Tensor, Tensor],
    grad_reduce: GradReduce | None,
    meta_loss_fn: Callable[[Tensor, Tensor], Tensor],
) -> EngineOut:
    """Pseudo step and meta loss with ``higher.innerloop_ctx`` (see ``meta_gradient``)."""
    position = {id(p): i for i, p in enumerate(student.parameters())}
    index = [position[id(s.param)] for s in steps]
    params = [s.param for s in steps]
    state: dict = {"fixed_grads": None, "constant": set()}

    def callback(all_grads: Sequence[Tensor | None]) -> list[Tensor | None]:
        # higher passes one entry per student parameter (None for frozen ones): add the fixed part's
        # gradients to the trainable ones and reduce them.
        grads, state["constant"] = combine(state["fixed_grads"], [all_grads[i] for i in index])
        out = list(all_grads)
        for i, g in zip(index, reduce_grads(grads, params, grad_reduce)):
            out[i] = g
        return out

    source = _diff_optimizer_source(steps)
    with higher.innerloop_ctx(student, source, copy_initial_weights=False, track_higher_grads=True) as (
        fmodel,
        diffopt,
    ):
        # copy_initial_weights=False: fmodel starts from (clones of) the real parameters, so this forward
        # carries the graph to them and the real student step can reuse it.
        student_out = fmodel(lq, return_feats=True)
        fixed, meta = split_losses(inner_loss(*student_out))
        if fixed is not None:
            fast = list(fmodel.parameters())
            state["fixed_grads"] = fixed_gradients(fixed, [fast[i] for i in index])
        diffopt.step(meta, grad_callback=callback)
        if state["constant"]:
            constant = {index[j] for j in state["constant"]}
            fmodel.update_params(
                [p.detach() if i in constant else p for i, p in enumerate(fmodel.fast_params)]
            )
        meta_lq, meta_gt = meta_input
        sr_meta = fmodel(meta_lq, return_feats=True)[0]
    return meta_loss_fn(sr_meta, meta_gt), student_out, state["fixed_grads"]
