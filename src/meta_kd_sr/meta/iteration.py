"""One training iteration (docs/method.md) after the teacher forward: ``run_iteration``.

It reads and changes only what it is given: the student, the distiller (KD losses, adapters, KRNets), the
optimizers and the batch. ``SRModule.iteration`` runs the teacher forward and calls it.

A plain iteration (no KRNet optimizer given): student forward, loss terms (finite check), ``backward``
(under Lightning ``manual_backward``, whose DDP reducer averages the gradients), gradient check, student
step. KRNets, if any, are frozen: they get no gradient.

A meta iteration, in order; an arrow names a value that a later stage reuses (returned and passed, never
kept on an object):

1. Student forward on the train batch, graph kept -> ``outputs``; the KD losses' inputs that phi does not
   change (the KRNets' generator inputs: detached student feature and correlation) -> ``prepared``
   (``Distiller.prepare``). Both serve stages 2 and 4, as do the teacher outputs.
2. Meta step (``meta_gradient``): the pseudo step's gradient g at the current phi (a plain backward from
   ``outputs``; loss terms checked first), theta' = theta - step(g) (K steps on the same batch for
   ``meta.inner_steps`` K > 1, whose inner losses build the KRNet inputs at each theta_k instead of reusing
   ``prepared``), the meta loss on the meta batch (its targets rolled for ``meta.control=shuffle``) and its
   exact second-order gradient in phi -> ``result``: ``grads``; ``inner`` (the student's outputs, detached,
   and g); ``trunk`` (the distilled outputs with the graph that the meta backward's forward-mode pass
   recorded; empty for the reference engine).
3. KRNet step: the meta-gradients (and the meta loss) averaged across ranks; a non-finite one is dropped
   (KRNets, their optimizer state, the accumulation window and the whole-run signal untouched;
   ``KRNetStep.skipped``). A finite one feeds the whole-run signal (``meta.signal``) and the accumulation
   window (``meta.accumulate``); when the window is full (every meta step for M = 1), its mean drives one step
   of the raw KRNet optimizer -> phi' (else phi' = phi).
4. Real student step at phi': loss terms on ``inner``'s outputs with ``prepared`` (no student forward),
   finite check; gradient ``inner.at(output gradients, trunk)`` (one backward through ``trunk``), averaged
   across ranks by hand (no DDP backward runs in a meta iteration), gradient check, student step.

Precision (``trainer.precision=bf16-mixed``, i.e. the iteration under bf16 autocast): the convolutions of
every stage run in bf16 - student, teacher, KRNet generators and filtering, the meta-batch forward at theta'
and the forward-mode pass of the meta backward - while the parameters, the optimizer states, the pseudo step
theta' = theta - step(g) (autocast leaves elementwise arithmetic on float32 tensors alone) and the
meta-gradients stay float32. Nothing is forced back to float32: on one batch, the bf16 meta-gradient's cosine
to the float32 one was 0.9995-0.9998 (3 seeds, engine "higher"; ``tests/meta/test_bf16.py`` asserts >= 0.99
for every engine). The one bf16 loss is the kernels' zero mean (the texture constraint): a bf16 kernel of 9
taps keeps a DC leak of about 0.4 % of its norm, far below what changes the meta-gradient.

Non-finite values follow :mod:`meta_kd_sr.runtime.finite`: a bad loss term or student gradient raises
``NonFiniteError`` before any step; every rank sees the same reduced gradients, so all decide alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from meta_kd_sr.distill import Distiller
from meta_kd_sr.meta.accumulate import MetaAccumulator
from meta_kd_sr.meta.health import MetaHealth
from meta_kd_sr.meta.outputs import (
    AnyOptimizer,
    IterationResult,
    KRNetStep,
    Logs,
    StudentOutputs,
    TeacherOutputs,
    Terms,
)
from meta_kd_sr.meta.settings import MetaSettings
from meta_kd_sr.meta.signal import MetaSignal
from meta_kd_sr.meta.step import MetaResult, ddp_grad_mean, meta_gradient, unwrap_optimizer
from meta_kd_sr.runtime.ddp import all_reduce_mean, world_size
from meta_kd_sr.runtime.finite import check_grads, check_terms, first_nonfinite_index


def train_part(batch: Mapping[str, Any]) -> Mapping[str, Any]:
    """The train batch: ``batch["train"]`` when the loader also serves a meta batch, else ``batch``."""
    return batch["train"] if "train" in batch else batch


@contextmanager
def frozen(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Temporarily stop gradients to ``params`` (the student steps do not train the KRNets)."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def run_iteration(
    student: nn.Module,
    distiller: Distiller,
    teacher_out: TeacherOutputs,
    batch: Mapping[str, Any],
    opt_student: AnyOptimizer,
    opt_krnet: AnyOptimizer | None,
    settings: MetaSettings,
    *,
    backward: Callable[[Tensor], object] = Tensor.backward,
    iteration: int | None = None,
    health: MetaHealth | None = None,
    accumulator: MetaAccumulator | None = None,
    signal: MetaSignal | None = None,
) -> IterationResult:
    """One training iteration: the plain student step, or meta step, KRNet step and real student step.

    Args:
        student: ``student(lq, return_feats=True) -> (sr, feats)``.
        distiller: loss terms from outputs and features; its KRNets are the meta parameters.
        teacher_out: the teacher's SR image and features on the train batch, computed once without a graph
            (``TeacherOutputs()`` without a teacher).
        batch: ``{"lq", "gt"}``, or ``{"train": {...}, "meta": {...}}`` for a meta iteration.
        opt_student: the student (+ adapters) optimizer; stepped as given (Lightning's wrapper counts the
            trainer's iterations).
        opt_krnet: the KRNet optimizer (stepped raw); given, this iteration runs the meta step.
        settings: engine, pseudo step and DDP sync of the meta step.
        backward: back-propagation of the plain step's loss (``manual_backward`` under Lightning).
        iteration: the trainer's global step, named in ``NonFiniteError`` messages.
        health: given, fed every applied KRNet step with the gradient it applied (the window's mean when
            ``meta.accumulate`` > 1); it adds its logs (``train/krnet_drift``, ``train/meta_noise_share``,
            ``train/meta_snr``; see :mod:`meta_kd_sr.meta.health`).
        accumulator: the meta-gradient window across iterations (``meta.accumulate``); None: a KRNet step
            per meta step.
        signal: given, fed every finite meta-gradient (the whole-run z of ``meta.signal``).

    Returns:
        The student step's loss terms (``loss``, ``loss_rec``, ...), the meta step's values to log
        (``train/loss_meta``, ``train/meta_grad_norm``, ``train/meta_skip``, and ``health``'s; empty for a
        plain iteration) and the KRNet step (``None`` for a plain iteration).
    """
    if opt_krnet is None:
        train = train_part(batch)
        terms = _plain_step(student, distiller, teacher_out, train, opt_student, backward, iteration)
        return IterationResult(terms, {})
    if not (settings.enabled and distiller.meta_parameters()):
        raise ValueError("opt_krnet given but meta learning is off (no KRNets, or meta.enabled=false)")
    if "meta" not in batch:
        raise ValueError("a meta step needs a meta batch: the batch must be {'train': ..., 'meta': ...}")
    trackers = (health, accumulator, signal)
    return _meta_iteration(
        student, distiller, teacher_out, batch, (opt_student, opt_krnet), settings, iteration, trackers
    )


def _meta_iteration(
    student: nn.Module,
    distiller: Distiller,
    teacher_out: TeacherOutputs,
    batch: Mapping[str, Any],
    optimizers: tuple[AnyOptimizer, AnyOptimizer],
    settings: MetaSettings,
    iteration: int | None,
    trackers: tuple[MetaHealth | None, MetaAccumulator | None, MetaSignal | None],
) -> IterationResult:
    """Stages 1-4 of the module docstring, in order."""
    opt_student, opt_krnet = optimizers
    lq, gt = batch["train"]["lq"], batch["train"]["gt"]
    with record_function("iteration/meta_step"):
        with record_function("meta/student_forward"):  # 1
            outputs = StudentOutputs(*student(lq, return_feats=True))
            feats_t = teacher_out.feats
            prepared = distiller.prepare(outputs.feats, feats_t) if feats_t is not None else {}

        def loss_terms(sr: Tensor, feats: dict[str, Tensor], at_theta: bool = True) -> Terms:  # stages 2, 4
            ready = prepared if at_theta else None  # theta_k (k >= 1) has its own KRNet inputs
            terms = distiller(sr, feats, gt, sr_t=teacher_out.sr, feats_t=feats_t, prepared=ready)
            check_terms(terms, iteration)  # before any backward
            return terms

        world, one_step = world_size(), settings.inner_steps == 1  # 2
        result = meta_gradient(
            student,
            distiller.meta_parameters(),
            lambda sr, feats: loss_terms(sr, feats, one_step)["loss"],
            lq,
            batch["meta"]["lq"],
            settings.meta_targets(batch["meta"]["gt"]),
            optimizer=opt_student,
            pseudo=settings.step_settings,
            engine=settings.engine,
            grad_reduce=ddp_grad_mean(world) if settings.sync == "exact" and world > 1 else None,
            outputs=outputs,
            meta_loss_fn=settings.meta_loss_fn,
        )
        krnet = _krnet_step(distiller.meta_parameters(), result, opt_krnet, *trackers)  # 3
    with record_function("iteration/student_step"):  # 4
        terms = _real_step(result, loss_terms, distiller, opt_student, _namer(student, distiller), iteration)
    return IterationResult(terms, krnet.logs, krnet)


def _plain_step(
    student: nn.Module,
    distiller: Distiller,
    teacher_out: TeacherOutputs,
    train: Mapping[str, Tensor],
    opt_student: AnyOptimizer,
    backward: Callable[[Tensor], object],
    iteration: int | None,
) -> Terms:
    """Student forward, loss terms, backward, student step; the KRNets (if any) are frozen."""
    sr, feats = StudentOutputs(*student(train["lq"], return_feats=True))
    with frozen(distiller.meta_parameters()):
        terms = distiller(sr, feats, train["gt"], sr_t=teacher_out.sr, feats_t=teacher_out.feats)
    check_terms(terms, iteration)
    opt_student.zero_grad(set_to_none=True)
    backward(terms["loss"])
    params = [p for group in opt_student.param_groups for p in group["params"] if p.grad is not None]
    check_grads(params, [p.grad for p in params], _namer(student, distiller), iteration)
    opt_student.step()
    return terms


def _krnet_step(
    params: list[nn.Parameter],
    result: MetaResult,
    opt_krnet: AnyOptimizer,
    health: MetaHealth | None = None,
    accumulator: MetaAccumulator | None = None,
    signal: MetaSignal | None = None,
) -> KRNetStep:
    """Average the meta-gradients across ranks; feed the finite ones to the signal and the window.

    The KRNets step when the window is full, with its mean; a non-finite meta-gradient changes nothing.
    """
    # autograd.grad bypasses DDP's reducer: average by hand (identity on one process). The meta loss rides
    # along: a NaN in it can leave a zero gradient behind (L1's sign(NaN) is 0). Every rank decides on the
    # same averaged values, so all skip or all step (and all windows stay equal).
    *grads, meta_loss = all_reduce_mean([*result.grads, result.meta_loss])
    skip = first_nonfinite_index([*grads, meta_loss]) is not None
    health_logs: Logs = {}
    if not skip:
        if signal is not None:
            signal.update(grads)
        applied = grads if accumulator is None else accumulator.add(grads)
        if applied is not None:
            health_logs = _apply(params, applied, unwrap_optimizer(opt_krnet), health)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    skipped = torch.tensor(float(skip))
    logs = {"train/loss_meta": result.meta_loss, "train/meta_grad_norm": norm, "train/meta_skip": skipped}
    return KRNetStep(skipped=skip, logs=logs | health_logs)


def _apply(
    params: list[nn.Parameter], grads: list[Tensor], raw: torch.optim.Optimizer, health: MetaHealth | None
) -> dict[str, Tensor]:
    """One step of the raw KRNet optimizer with ``grads``; ``health``'s logs of it (``{}`` without)."""
    if health is not None and health.phi0 is None:
        health.start(params)
    for p, g in zip(params, grads):
        p.grad = g.to(p.dtype)
    raw.step()  # the raw step keeps trainer.global_step counting student steps, i.e. iterations
    raw.zero_grad(set_to_none=True)
    return health.update(params, grads) if health is not None else {}


def _real_step(
    result: MetaResult,
    loss_terms: Callable[[Tensor, dict[str, Tensor]], Terms],
    distiller: Distiller,
    opt_student: AnyOptimizer,
    name_of: Callable[[Tensor], str],
    iteration: int | None,
) -> Terms:
    """The student step at the updated phi on the meta step's outputs, through ``inner.at`` (no forward)."""
    inner = result.inner
    leaves, (sr, feats) = inner.leaves()
    side = [p for p in distiller.student_side_parameters() if p.requires_grad]
    with torch.enable_grad(), frozen(distiller.meta_parameters()):
        terms = loss_terms(sr, feats)
        grads = torch.autograd.grad(terms["loss"], leaves + side, allow_unused=True)
    params = inner.params + side
    grads = inner.at(grads[: len(leaves)], result.checked_trunk()) + list(grads[len(leaves) :])
    present = [(p, g) for p, g in zip(params, grads) if g is not None]
    reduced = all_reduce_mean([g for _, g in present])
    check_grads([p for p, _ in present], reduced, name_of, iteration)
    opt_student.zero_grad(set_to_none=True)
    for (p, _), g in zip(present, reduced):
        p.grad = g
    opt_student.step()
    opt_student.zero_grad(set_to_none=True)  # no .grad left for a later DDP backward to accumulate into
    return terms


def _namer(student: nn.Module, distiller: Distiller) -> Callable[[Tensor], str]:
    """``param -> "student.<name>"`` / ``"distiller.<name>"``, for error messages (built only when called)."""

    def name_of(param: Tensor) -> str:
        named = [*student.named_parameters(prefix="student"), *distiller.named_parameters(prefix="distiller")]
        name = next((n for n, p in named if p is param), f"a parameter of shape {tuple(param.shape)}")
        return name.replace("._orig_mod", "")  # a torch.compile'd student names its weights the same

    return name_of
