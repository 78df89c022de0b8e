"""The reference engine: the textbook pseudo step, the definition that ``higher`` and ``func`` must equal.

    g      = autograd.grad(inner_loss(S_theta(lq)), theta, create_graph=True)     # graph to phi kept
    theta' = theta - step(g)                                                       # SGD or Adam rule
    (K > 1: the same again from theta', K times in all, on the same train batch)   # unrolled lookahead
    L_meta = L1(S_theta'(meta_lq), meta_gt)                                        # d/dphi: reverse mode

It keeps the graph of the student's backward and back-propagates through it: slower and heavier than the
carried engines (``meta_kd_sr.meta.carried``), never the default. The tests hold ``higher`` and ``func`` to it
in float64 (<= 1e-10 relative). Select it with ``meta.engine=reference``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from meta_kd_sr.meta.carried import InnerLoss, StudentOut, _flatten, _unflatten
from meta_kd_sr.meta.engines import GradReduce, ParamStep, Unroll, step_fast, unroll_fast
from meta_kd_sr.meta.outputs import StudentOutputs


@dataclass
class UnrolledGradient:
    """The reference engine's inner gradient: g at the current phi and the student's outputs, graph kept.

    Same interface as ``InnerGradient`` for the real student step: ``leaves()`` and ``at(output_grads)``.
    """

    params: list[Tensor]
    value: list[Tensor | None]
    outputs: list[tuple[str, Tensor]]

    def leaves(self) -> tuple[list[Tensor], StudentOut]:
        """Fresh leaves of the outputs (``requires_grad``), as a list and as ``(sr, feats)``."""
        leaves = [t.detach().requires_grad_() for _, t in self.outputs]
        return leaves, _unflatten([k for k, _ in self.outputs], leaves)

    def at(self, output_grads: Sequence[Tensor | None], trunk: Sequence[Tensor] | None = None) -> list:
        """J^T output_grads: a backward through the student's forward graph (``trunk`` is not used)."""
        pairs = [(t, g) for (_, t), g in zip(self.outputs, output_grads) if g is not None and t.requires_grad]
        if not pairs:
            return [None] * len(self.params)
        outs, grads = zip(*pairs)
        return list(torch.autograd.grad(outs, self.params, grads, retain_graph=True, allow_unused=True))


def run_reference(
    student: nn.Module,
    steps: list[ParamStep],
    inner_loss: InnerLoss,
    train_input: tuple[Tensor, StudentOut | None],
    meta_input: tuple[Tensor, Tensor],
    grad_reduce: GradReduce | None,
    meta_loss_fn: Callable[[Tensor, Tensor], Tensor],
    unroll: Unroll | None = None,
) -> tuple[Tensor, UnrolledGradient]:
    """The meta loss at theta' by the textbook pseudo step.

    Args:
        student: the student (not changed).
        steps: the update rule of each trainable parameter.
        inner_loss: ``(sr, feats) -> scalar`` on the train batch.
        train_input: ``(lq, outputs)``: the train batch and ``student(lq, return_feats=True)`` with its
            graph (None: run here).
        meta_input: ``(meta_lq, meta_gt)``.
        grad_reduce: applied to the pseudo-step gradients before the update (DDP), or None.
        meta_loss_fn: ``(sr, gt) -> scalar``.
        unroll: the pseudo steps after the first (K > 1), or None (one step).

    Returns:
        The meta loss (graph to phi) and the inner gradient for the real student step.
    """
    lq, outputs = train_input
    outputs = StudentOutputs(*student(lq, return_feats=True)) if outputs is None else outputs
    params: list[Tensor] = [s.param for s in steps]
    value = torch.autograd.grad(inner_loss(*outputs), params, create_graph=True, allow_unused=True)
    fast: dict[str, Tensor] = dict(student.named_parameters())
    step_fast(fast, steps, value, grad_reduce)
    unroll_fast(student, fast, steps, unroll, grad_reduce)
    meta_lq, meta_gt = meta_input
    meta_loss = meta_loss_fn(functional_call(student, fast, (meta_lq,)), meta_gt)
    detached = [None if g is None else g.detach() for g in value]
    return meta_loss, UnrolledGradient(params, detached, _flatten(outputs))
