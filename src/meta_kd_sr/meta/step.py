"""The meta step (docs/method.md): the exact second-order meta-gradient of the KRNet parameters.

theta' = theta - step(grad_theta inner_loss(theta, phi)) is a differentiable pseudo update of the student that
is never applied; the meta loss L_meta = L1(S_theta'(meta_lq), meta_gt) depends on phi only through theta', so
a first-order approximation gives exactly zero and the graph of the pseudo step must be kept.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from meta_kd_sr.meta.carried import InnerGradient, InnerLoss, StudentOut, inner_gradient
from meta_kd_sr.meta.engines import GradReduce, ParamStep, Unroll, run_func, run_higher
from meta_kd_sr.meta.outputs import AnyOptimizer
from meta_kd_sr.meta.reference import UnrolledGradient, run_reference

ENGINES = ("higher", "func", "reference")
PSEUDO_KINDS = ("sgd", "sgd_lr", "adam_state")


@dataclass(frozen=True)
class PseudoStep:
    """How the student moves in the pseudo step.

    Attributes:
        kind: "sgd" (theta - alpha * g with a fixed alpha), "sgd_lr" (alpha = lr_factor x the real
            optimizer's current lr of each parameter's group) or "adam_state" (exactly
            ``torch.optim.Adam``'s next step from the REAL optimizer's exp_avg, exp_avg_sq and step, with
            lr = lr_factor x its current lr; never a fresh Adam, whose first step is about lr * sign(g) and
            gives an eps-driven meta-gradient).
        alpha: SGD step for kind "sgd". The meta-gradient is proportional to alpha, so it must not vanish
            with a decaying schedule (hence fixed). Default 0.1: a real Adam step at lr 1e-4 moves each
            weight by about 1e-4, and the gradient RMS of L1-trained SR students was measured between 5e-3
            (start) and 6e-5 (after a few hundred iterations), i.e. alpha in [0.02, 1.7] matches a real step;
            0.1 stays in the linear regime at the start (pseudo step RMS 5e-4) and keeps the meta signal
            later.
        lr_factor: multiplies the optimizer's lr for kinds "sgd_lr" and "adam_state".
        inner_steps: K, the pseudo steps of the lookahead, all on the same train batch: theta' = theta_K,
            theta_(k+1) = theta_k - step(grad inner_loss(theta_k, phi)). K > 1 is refused for "adam_state":
            the real optimizer's state defines its next step only, and the K-step continuation has no one
            definition the engines share (higher's Adam places eps differently after its first step).
    """

    kind: str = "sgd"
    alpha: float = 0.1
    lr_factor: float = 1.0
    inner_steps: int = 1

    def __post_init__(self) -> None:
        if self.kind not in PSEUDO_KINDS:
            raise ValueError(f"pseudo step kind must be one of {PSEUDO_KINDS}, got {self.kind!r}")
        if not self.alpha > 0 or not self.lr_factor > 0:
            raise ValueError(f"alpha and lr_factor must be > 0, got {self.alpha} and {self.lr_factor}")
        if (
            isinstance(self.inner_steps, bool)
            or int(self.inner_steps) != self.inner_steps
            or self.inner_steps < 1
        ):
            raise ValueError(f"meta.inner_steps must be an integer >= 1, got {self.inner_steps!r}")
        if self.kind == "adam_state" and self.inner_steps > 1:
            raise ValueError(
                f"meta.pseudo=adam_state takes the real optimizer's next step only, got meta.inner_steps="
                f"{self.inner_steps}: use meta.pseudo=sgd or sgd_lr for a lookahead of several steps"
            )


@dataclass
class MetaResult:
    """Output of ``meta_gradient``.

    Attributes:
        meta_loss: detached scalar L_meta at theta'.
        grads: d L_meta / d meta_params, same order and shapes as ``meta_params``.
        inner: the inner gradient at theta and the current phi (local to this process), with the student's
            detached outputs on the train batch: ``inner.at(output_grads, trunk)`` gives the real student
            step's gradient after phi has changed, without running the student again.
        trunk: the carried outputs with their graph to theta, recorded by the meta backward's forward-mode
            pass (carried engines; empty for "reference"): what ``inner.at`` back-propagates through. It is
            filled while ``torch.autograd.grad`` runs the meta backward (an autograd ``Function`` can return
            gradients only); ``checked_trunk`` is how the real student step reads it.
    """

    meta_loss: Tensor
    grads: list[Tensor]
    inner: InnerGradient | UnrolledGradient
    trunk: list[Tensor]

    def checked_trunk(self) -> list[Tensor]:
        """``trunk``, refused when the carried outputs need it and the meta backward did not record it.

        Raises:
            RuntimeError: ``inner`` carries outputs whose gradient depends on phi, and ``trunk`` is empty,
                i.e. the meta backward never reached the carried pseudo-step gradient.
        """
        if isinstance(self.inner, InnerGradient) and self.inner.reached and not self.trunk:
            raise RuntimeError(
                "MetaResult.trunk is empty: the meta backward did not record the carried student outputs "
                "that the real student step back-propagates through (was the meta loss differentiated with "
                "torch.autograd.grad over the meta parameters?)"
            )
        return self.trunk


@overload
def unwrap_optimizer(optimizer: None) -> None: ...
@overload
def unwrap_optimizer(optimizer: AnyOptimizer) -> torch.optim.Optimizer: ...
@overload
def unwrap_optimizer(optimizer: object | None) -> torch.optim.Optimizer | None: ...
def unwrap_optimizer(optimizer: object | None) -> torch.optim.Optimizer | None:
    """The raw torch optimizer behind ``optimizer`` (Lightning's ``LightningOptimizer`` wraps it)."""
    if optimizer is None:
        return None
    raw = getattr(optimizer, "optimizer", optimizer)
    if not isinstance(raw, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return raw


def _adam_state(name: str, p: Tensor, group: dict, opt: torch.optim.Optimizer, engine: str) -> dict:
    decoupled = isinstance(opt, torch.optim.AdamW) or bool(group.get("decoupled_weight_decay", False))
    if decoupled and engine == "higher":
        raise ValueError(
            "pseudo kind 'adam_state' with an AdamW optimizer: higher has no differentiable AdamW "
            "(use engine='func', or torch.optim.Adam)"
        )
    if group.get("amsgrad") or group.get("maximize"):
        raise ValueError("pseudo kind 'adam_state' supports neither amsgrad=True nor maximize=True")
    state = opt.state.get(p, {})
    if "exp_avg" not in state:
        raise ValueError(
            f"pseudo kind 'adam_state' needs the real optimizer's Adam state, and student parameter {name!r} "
            "has none yet: take real optimizer steps before the first meta step (meta warm-up)"
        )
    hyper = {k: group[k] for k in ("betas", "eps", "weight_decay")}
    moments = {k: state[k] for k in ("exp_avg", "exp_avg_sq")}
    return {**hyper, **moments, "decoupled": decoupled, "step": float(state["step"])}


def plan_pseudo_step(
    named: list[tuple[str, Tensor]], pseudo: PseudoStep, opt: torch.optim.Optimizer | None, engine: str
) -> list[ParamStep]:
    """One ``ParamStep`` per trainable student parameter, reading the real optimizer where ``pseudo`` says."""
    if pseudo.kind == "sgd":
        return [ParamStep(n, p, pseudo.alpha) for n, p in named]
    if opt is None:
        raise ValueError(f"pseudo kind {pseudo.kind!r} reads the real optimizer: pass optimizer=")
    if pseudo.kind == "adam_state" and not isinstance(opt, torch.optim.Adam):
        raise ValueError(
            f"pseudo kind 'adam_state' needs torch.optim.Adam or AdamW, got {type(opt).__name__}"
        )
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    steps = []
    for name, p in named:
        group = group_of.get(id(p))
        if group is None:
            raise ValueError(f"student parameter {name!r} is not in the optimizer passed to meta_gradient")
        adam = _adam_state(name, p, group, opt, engine) if pseudo.kind == "adam_state" else None
        steps.append(ParamStep(name, p, pseudo.lr_factor * float(group["lr"]), adam))
    return steps


def _complete(grads: Sequence[Tensor | None], meta_params: list[Tensor]) -> list[Tensor]:
    missing = [i for i, g in enumerate(grads) if g is None]
    if len(missing) == len(grads):
        raise ValueError("the meta loss does not depend on any meta parameter: inner_loss must use them")
    if missing:
        warnings.warn(
            f"meta parameters at positions {missing} get no meta-gradient; using zeros", stacklevel=3
        )
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, meta_params)]


def meta_gradient(
    student: nn.Module,
    meta_params: Iterable[Tensor],
    inner_loss: InnerLoss,
    lq: Tensor,
    meta_lq: Tensor,
    meta_gt: Tensor,
    *,
    optimizer: object | None = None,
    pseudo: PseudoStep = PseudoStep(),  # noqa: B008 (frozen dataclass)
    engine: str = "higher",
    grad_reduce: GradReduce | None = None,
    meta_loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    outputs: StudentOut | None = None,
) -> MetaResult:
    """Exact meta-gradient d L1(S_theta'(meta_lq), meta_gt) / d meta_params; the student is not changed.

    Engines "higher" and "func" carry the pseudo-step gradient g(phi) through the student's outputs
    (``meta_kd_sr.meta.carried``): one plain backward of the student, and its derivative in phi by a
    forward-mode pass at the meta backward. "reference" (``meta_kd_sr.meta.reference``) differentiates
    ``autograd.grad(..., create_graph=True)``, the textbook definition they are tested against. With K > 1
    pseudo steps (``pseudo.inner_steps``) every engine takes the first step as above and the others with
    ``create_graph=True`` at the fast weights (theta_k depends on phi, so no carried shortcut applies).

    Args:
        student: returns ``(sr, feats)`` from ``student(lq, return_feats=True)``.
        meta_params: the KRNet parameters phi (``inner_loss`` must depend on them).
        inner_loss: ``(sr, feats) -> scalar`` distillation objective on the train batch (reconstruction +
            lambda * KD terms, teacher features precomputed). It must read the student only through the
            ``(sr, feats)`` it is given (a ValueError says so otherwise).
        lq: (B, 3, h, w) train batch input.
        meta_lq: (B_m, 3, h_m, w_m) meta batch input (a split disjoint from the train images).
        meta_gt: (B_m, 3, s*h_m, s*w_m) meta batch target.
        optimizer: the student's real optimizer (raw or a ``LightningOptimizer``); read by "sgd_lr" and
            "adam_state", never stepped.
        pseudo: the pseudo-step rule, with the number of pseudo steps K (``inner_steps``; each on
            ``lq``, theta' after the K-th).
        engine: "higher", "func" or "reference" (same result to rounding).
        grad_reduce: applied to the list of pseudo-step gradients (trainable student parameters, in
            ``student.parameters()`` order) before each pseudo step, e.g. ``ddp_grad_mean()`` under DDP. The
            returned meta-gradients are NOT reduced across ranks: that is the caller's job.
        meta_loss_fn: ``(sr, gt) -> scalar``; default L1.
        outputs: ``student(lq, return_feats=True)`` with its graph, when the caller has run it already.

    Returns:
        ``MetaResult``. Meta parameters that the meta loss does not reach get zeros and a warning; if none is
        reached a ValueError is raised (a silently zero meta-gradient is always a wiring bug).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if not isinstance(pseudo, PseudoStep):
        raise ValueError(f"pseudo must be a PseudoStep, got {type(pseudo).__name__}")
    meta_params = list(meta_params)
    if not meta_params or not all(p.requires_grad for p in meta_params):
        raise ValueError("meta_params must be a non-empty list of tensors that require grad")
    named: list[tuple[str, Tensor]] = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(
            "no student parameter requires grad, so the meta-gradient would be zero; do not run the meta "
            "step inside Lightning's toggle_optimizer (it freezes the student's parameters)"
        )
    steps = plan_pseudo_step(named, pseudo, unwrap_optimizer(optimizer), engine)
    meta_loss_fn = meta_loss_fn or F.l1_loss
    trunk: list[Tensor] = []  # filled by the meta backward (carried engines)
    unroll = Unroll(inner_loss, lq, pseudo.inner_steps - 1) if pseudo.inner_steps > 1 else None
    with torch.enable_grad():  # the pseudo step needs a graph even if the caller is under no_grad
        # record_function: named stages for torch.profiler (benchmarks/bench_step.py --stages)
        if engine == "reference":
            with record_function("meta/meta_forward"):
                meta_loss, inner = run_reference(
                    student,
                    steps,
                    inner_loss,
                    (lq, outputs),
                    (meta_lq, meta_gt),
                    grad_reduce,
                    meta_loss_fn,
                    unroll,
                )
        else:
            with record_function("meta/pseudo_gradient"):
                inner, grads = inner_gradient(student, inner_loss, lq, named, meta_params, outputs, trunk)
            run = run_higher if engine == "higher" else run_func
            with record_function("meta/meta_forward"):
                meta_loss = run(student, steps, grads, (meta_lq, meta_gt), grad_reduce, meta_loss_fn, unroll)
        # autograd.grad, not backward: it skips higher's fast-weight leaves (1.6x faster, NOTES).
        with record_function("meta/meta_backward"):
            meta_grads = torch.autograd.grad(meta_loss, meta_params, allow_unused=True)
    return MetaResult(meta_loss.detach(), _complete(meta_grads, meta_params), inner, trunk)


def ddp_grad_mean(world_size: int | None = None) -> Callable[[list[Tensor]], list[Tensor]]:
    """A differentiable all-reduce mean of the pseudo-step gradients, for ``meta_gradient(grad_reduce=...)``.

    All gradients go through one flat ``torch.distributed.nn.functional.all_reduce`` (differentiable, one
    collective per step). Identity when torch.distributed is not initialised or has a single process.

    Args:
        world_size: divisor of the sum; None reads ``torch.distributed.get_world_size()`` at call time.

    Returns:
        ``grads -> grads`` mapping a list of tensors to their cross-rank means.
    """
    if world_size is not None and world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")

    def reduce(grads: list[Tensor]) -> list[Tensor]:
        grads = list(grads)
        dist = torch.distributed
        if not grads or not (dist.is_available() and dist.is_initialized()):
            return grads
        n = world_size or dist.get_world_size()
        if n == 1:
            return grads
        from torch.distributed.nn.functional import all_reduce

        with warnings.catch_warnings():
            # Deprecated in recent torch for a private module; still the public differentiable all-reduce.
            warnings.simplefilter("ignore", FutureWarning)
            flat = all_reduce(torch.cat([g.reshape(-1) for g in grads])) / n
        return [c.view_as(g) for c, g in zip(flat.split([g.numel() for g in grads]), grads)]

    return reduce
