"""The pseudo step's gradient g(phi) = grad_theta inner_loss(theta, phi), carried by the student's outputs.

``inner_loss`` reads the student only through its outputs y = S_theta(x) (SR image and features), so

    g(phi) = J^T G(phi),    J = dy/dtheta,    G(phi) = d inner_loss / dy,

and for any w (what reverse mode brings back from theta' = theta - step(g)):

    w^T dg/dphi = (J w)^T dG/dphi.

J w is one forward-mode pass of the student (``torch.func.jvp``, no graph kept) and dG/dphi lives in the
small graph of the KD losses. So the exact second-order meta-gradient needs neither a graph of the student's
backward (``create_graph=True``) nor a backward through it: the student is back-propagated once, plainly,
for g at the current phi, and the outputs that phi does not touch (the SR image of an L1 loss) and the
parameters their gradients reach alone (the upsampler behind the last distilled feature) stay constants.
Both engines form theta' from the tensors of ``carry_inner_gradient``; it is the same value as
``torch.autograd.grad(inner_loss, theta, create_graph=True)``, with the same derivative in phi.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.func import functional_call
from torch.profiler import record_function

from meta_kd_sr.meta.outputs import StudentOutputs
from meta_kd_sr.models.blocks import accepts_features_only

StudentOut = StudentOutputs
InnerLoss = Callable[[Tensor, dict[str, Tensor]], Tensor]
SR_KEY = "sr"  # the SR image among the flattened outputs; feature keys follow in the student's order


def reached_leaves(roots: Iterable[Tensor]) -> set[int]:
    """``id`` of every leaf tensor that requires grad and that the autograd graphs of ``roots`` reach."""
    found, seen = set(), set()
    stack = []
    for r in roots:
        if r.grad_fn is not None:
            stack.append(r.grad_fn)
        elif r.requires_grad:
            found.add(id(r))
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad: the node of a leaf
        if variable is not None:
            found.add(id(variable))
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None and nxt not in seen)
    return found


def _flatten(out: object) -> list[tuple[str, Tensor]]:
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
        raise ValueError("the student must return (sr, feats) from student(lq, return_feats=True)")
    sr, feats = out
    if SR_KEY in feats:
        raise ValueError(f"a student feature must not be named {SR_KEY!r}")
    return [(SR_KEY, sr), *feats.items()]


def _unflatten(keys: Sequence[str], tensors: Sequence[Tensor]) -> StudentOut:
    """``(sr, feats)`` back from the flattened outputs (``"sr"`` first)."""
    return StudentOutputs(tensors[0], dict(zip(keys[1:], tensors[1:])))


@dataclass
class InnerGradient:
    """g = grad_theta inner_loss(theta, phi) of one train batch, and what the real student step reuses.

    Attributes:
        student: the student (not changed).
        lq: the train batch input.
        names: names of the trainable student parameters, in ``student.named_parameters()`` order.
        params: those parameters.
        value: g at the current phi, detached, per parameter (None where the loss does not reach it);
            local to this process (not reduced across ranks).
        outputs: the student's outputs on ``lq``, detached, as ``(key, tensor)`` pairs (``"sr"`` first).
        output_grads: d inner_loss / d output at the current phi, detached (None where unused).
        carried: keys of the outputs whose gradient depends on phi.
        reached: indices into ``params`` of the parameters that the carried outputs depend on.
    """

    student: nn.Module
    lq: Tensor
    names: list[str]
    params: list[Tensor]
    value: list[Tensor | None]
    outputs: list[tuple[str, Tensor]]
    output_grads: list[Tensor | None]
    carried: list[str]
    reached: list[int] = field(default_factory=list)

    def leaves(self) -> tuple[list[Tensor], StudentOut]:
        """Fresh leaves of the outputs (``requires_grad``), as a list and as ``(sr, feats)``."""
        leaves = [t.detach().requires_grad_() for _, t in self.outputs]
        return leaves, _unflatten([k for k, _ in self.outputs], leaves)

    def _carried_outputs(self, params: dict[str, Tensor] | None = None) -> list[Tensor]:
        """The carried outputs recomputed at theta (or with ``params`` substituted), graph attached."""
        features_only = SR_KEY not in self.carried and accepts_features_only(self.student)
        kwargs = {"features_only": True} if features_only else {"return_feats": True}
        if params is None:
            out = self.student(self.lq, **kwargs)
        else:
            out = functional_call(self.student, params, (self.lq,), kwargs)
        named = dict(out) if features_only else dict(_flatten(out))
        return [named[k] for k in self.carried]

    def jvp(self, tangents: Sequence[Tensor]) -> list[Tensor | None]:
        """J w: the carried outputs' derivatives along ``tangents`` (one per reached parameter)."""
        return self.jvp_and_trunk(tangents)[0]

    def jvp_and_trunk(self, tangents: Sequence[Tensor]) -> tuple[list[Tensor | None], list[Tensor]]:
        """J w by one forward-mode pass (dual numbers, no graph of the tangents), and what it recorded.

        Returns:
            The tangents J w, and the primal carried outputs with the usual autograd graph to theta that the
            pass recorded (the "trunk"): ``at`` can back-propagate through it instead of running the student
            again.
        """
        names = [self.names[i] for i in self.reached]
        with record_function("meta/jvp"), torch.enable_grad(), fwAD.dual_level():
            duals = {n: fwAD.make_dual(self.params[i], t) for n, i, t in zip(names, self.reached, tangents)}
            unpacked = [fwAD.unpack_dual(o) for o in self._carried_outputs(duals)]
        return [u.tangent for u in unpacked], [u.primal for u in unpacked]

    def at(
        self, output_grads: Sequence[Tensor | None], trunk: Sequence[Tensor] | None = None
    ) -> list[Tensor | None]:
        """The gradient for new output gradients (phi changed, not theta): value + J^T (new - old).

        Args:
            output_grads: d loss / d output for every output in ``outputs`` order; those of outputs that are
                not carried must be the current ones (they do not depend on phi).
            trunk: the carried outputs at theta with their graph (``MetaResult.trunk``, recorded by the meta
                backward); empty or None: they are computed again here.

        Returns:
            The gradient per parameter of ``params`` (None where the loss reaches nothing).
        """
        if len(output_grads) != len(self.outputs):
            raise ValueError(f"expected {len(self.outputs)} output gradients, got {len(output_grads)}")
        keys = [k for k, _ in self.outputs]
        deltas = []
        for key in self.carried:
            i = keys.index(key)
            new, old = output_grads[i], self.output_grads[i]
            new = torch.zeros_like(self.outputs[i][1]) if new is None else new
            deltas.append(new - old if old is not None else new)
        grads = list(self.value)
        if not self.reached:
            return grads
        with torch.enable_grad():
            outs = list(trunk) if trunk else self._carried_outputs()
            reached = [self.params[i] for i in self.reached]
            extra = torch.autograd.grad(outs, reached, grad_outputs=deltas, allow_unused=True)
        for i, e in zip(self.reached, extra):
            old = grads[i]
            if e is not None:
                grads[i] = e if old is None else old + e
        return grads


class _Carried(torch.autograd.Function):
    """Outputs g[reached] (the values) as a function of the carried output gradients G(phi).

    Backward: the incoming w (one per reached parameter) maps to J w on the carried outputs. The trunk that
    the forward-mode pass records is an output of the meta backward: it goes to the caller's ``trunk`` list
    (an autograd backward can return gradients only).
    """

    @staticmethod
    def forward(ctx, inner: InnerGradient, trunk: list[Tensor], *carried_grads: Tensor) -> tuple[Tensor, ...]:  # noqa: ARG004
        ctx.inner, ctx.trunk = inner, trunk
        # reached holds only the indices of parameters with a gradient value (see inner_gradient)
        return tuple(v.clone() for v in (inner.value[i] for i in inner.reached) if v is not None)

    @staticmethod
    def backward(ctx, *w: Tensor) -> tuple[None, ...]:
        tangents, ctx.trunk[:] = ctx.inner.jvp_and_trunk(w)
        return (None, None, *tangents)


def inner_gradient(
    student: nn.Module,
    inner_loss: InnerLoss,
    lq: Tensor,
    params: list[tuple[str, Tensor]],
    meta_params: Iterable[Tensor],
    outputs: StudentOut | None = None,
    trunk: list[Tensor] | None = None,
) -> tuple[InnerGradient, list[Tensor | None]]:
    """Back-propagate the inner loss once and return g with its dependence on phi attached.

    Args:
        student: returns ``(sr, feats)`` from ``student(lq, return_feats=True)``.
        inner_loss: ``(sr, feats) -> scalar``; it must reach the student through these outputs only.
        lq: the train batch input.
        params: the trainable student parameters with their names.
        meta_params: phi.
        outputs: ``student(lq, return_feats=True)`` with its graph, when the caller has run it already.
        trunk: an empty list that receives, when a backward reaches the carried gradient, the carried
            outputs with their graph (see ``InnerGradient.jvp_and_trunk``); None: they are dropped.

    Returns:
        The ``InnerGradient`` and g as tensors per parameter: carried ones (graph to phi through a JVP
        node), constants (detached) where phi cannot change them, None where the loss does not reach.
    """
    names, tensors = [n for n, _ in params], [p for _, p in params]
    flat = _flatten(student(lq, return_feats=True) if outputs is None else outputs)
    keys = [k for k, _ in flat]
    leaves = [t.detach().requires_grad_() for _, t in flat]
    loss = inner_loss(*_unflatten(keys, leaves))
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ValueError(f"inner_loss must return a scalar tensor, got {type(loss).__name__}")
    reached_by_loss = reached_leaves([loss])
    if reached_by_loss & {id(p) for p in student.parameters()}:
        raise ValueError(
            "inner_loss uses the student's parameters directly; it must read the student only through the "
            "(sr, feats) it is given"
        )
    grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
    phi = {id(p) for p in meta_params}
    # outputs without a graph (e.g. behind frozen layers) move no parameter
    live = [g is not None and t.requires_grad for (_, t), g in zip(flat, grads)]
    carried = [k for k, g, ok in zip(keys, grads, live) if ok and reached_leaves([g]) & phi]
    used = [(t, g.detach()) for (_, t), g, ok in zip(flat, grads, live) if ok]
    carried_out = [t for (k, t) in flat if k in carried]
    reach = reached_leaves(carried_out)
    value = (
        list(torch.autograd.grad([t for t, _ in used], tensors, [g for _, g in used], allow_unused=True))
        if used
        else [None] * len(tensors)
    )
    inner = InnerGradient(
        student=student,
        lq=lq,
        names=names,
        params=tensors,
        value=[None if v is None else v.detach() for v in value],
        outputs=[(k, t.detach()) for k, t in flat],
        output_grads=[None if g is None else g.detach() for g in grads],
        carried=carried,
        reached=[i for i, p in enumerate(tensors) if id(p) in reach and value[i] is not None],
    )
    out = list(inner.value)
    if inner.reached:
        carried_grads = [g for k, g in zip(keys, grads) if k in carried]
        outbox = [] if trunk is None else trunk
        for i, g in zip(inner.reached, _Carried.apply(inner, outbox, *carried_grads)):
            out[i] = g
    return inner, out
