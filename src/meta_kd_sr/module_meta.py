"""The meta iteration of :class:`~meta_kd_sr.module.SRModule`: settings and the KRNet update.

The maths (pseudo step, meta loss, meta-gradient) lives in :mod:`meta_kd_sr.meta`; this file only feeds it
the module's objects and applies the result with the KRNet optimizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

from meta_kd_sr.ddp import all_reduce_mean, world_size
from meta_kd_sr.meta import InnerGradient, MetaResult, PseudoStep, ddp_grad_mean, meta_gradient

if TYPE_CHECKING:
    from meta_kd_sr.module import SRModule


@dataclass
class MetaSettings:
    """How and when the KRNets are meta-learned (SPEC §5).

    Attributes:
        enabled: run the meta step when the distiller has meta parameters (``False``: KRNets stay frozen).
        engine: "higher" (default) or "func" (``torch.func.functional_call``); same meta-gradient.
        pseudo: pseudo-step kind: "sgd" (fixed ``alpha``), "sgd_lr" (``lr_factor`` x the student's current
            learning rate) or "adam_state" (Adam-shaped step from the real optimizer's state).
        alpha: the fixed pseudo-step size of "sgd"; the meta-gradient is proportional to it.
        lr_factor: multiplier of the learning rate for "sgd_lr" / "adam_state".
        every_n_steps: run the meta step every n training iterations.
        warmup_steps: iterations before the first meta step.
        lr: KRNet Adam learning rate (the scheduler of the student is applied to it too).
        betas: KRNet Adam betas.
        sync: under DDP, "exact" averages the pseudo gradient across ranks differentiably before theta' is
            formed, so N ranks with batch b compute the update of one process with batch N*b; "local" forms
            theta' from each rank's own batch (one collective less per meta step; an approximation: the
            KRNets still get the rank-averaged meta-gradient and stay identical, but the meta-gradient is
            that of N pseudo steps on batches of b, not of one on N*b). Same result on one process.
    """

    enabled: bool = True
    engine: str = "higher"
    pseudo: str = "sgd"
    alpha: float = 0.1
    lr_factor: float = 1.0
    every_n_steps: int = 1
    warmup_steps: int = 0
    lr: float = 1e-4
    betas: Sequence[float] = (0.9, 0.999)
    sync: str = "exact"

    def __post_init__(self) -> None:
        if self.every_n_steps < 1:
            raise ValueError(f"meta.every_n_steps must be >= 1, got {self.every_n_steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"meta.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.sync not in ("exact", "local"):
            raise ValueError(f"meta.sync must be 'exact' or 'local', got {self.sync!r}")
        self.betas = tuple(float(b) for b in self.betas)
        self.step_settings = PseudoStep(kind=self.pseudo, alpha=self.alpha, lr_factor=self.lr_factor)

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values (safe for ``torch.load(weights_only=True)``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def is_due(self, iteration: int) -> bool:
        """Whether iteration ``iteration`` (0-based, counted in student steps) runs the meta step."""
        done = iteration - self.warmup_steps
        return done >= 0 and done % self.every_n_steps == 0

    def build_optimizer(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The KRNet optimizer: Adam with ``lr`` and ``betas``."""
        return torch.optim.Adam(params, lr=self.lr, betas=self.betas)


@contextmanager
def frozen(params: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    """Temporarily stop gradients to ``params`` (the real student step does not train the KRNets)."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def meta_update(
    module: SRModule,
    opt_krnet: Any,
    opt_student: Any,
    lq: torch.Tensor,
    gt: torch.Tensor,
    meta_batch: Mapping[str, torch.Tensor],
    sr_t: torch.Tensor | None,
    feats_t: Mapping[str, torch.Tensor] | None,
) -> tuple[MetaResult, dict[str, torch.Tensor]]:
    """Meta-gradient of the KRNets through a pseudo student step, then one KRNet optimizer step.

    Returns:
        The ``MetaResult`` (its ``inner`` serves the real student step) and the values to log.
    """
    settings, distiller = module.meta, module.distiller
    params = distiller.meta_parameters()

    def inner_loss(sr: torch.Tensor, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return distiller(sr, feats, gt, sr_t=sr_t, feats_t=feats_t)["loss"]

    world = world_size()
    result = meta_gradient(
        module.student,
        params,
        inner_loss,
        lq,
        meta_batch["lq"],
        meta_batch["gt"],
        optimizer=getattr(opt_student, "optimizer", opt_student),
        pseudo=settings.step_settings,
        engine=settings.engine,
        grad_reduce=ddp_grad_mean(world) if settings.sync == "exact" and world > 1 else None,
    )
    # autograd.grad bypasses DDP's reducer: average the meta-gradients by hand (identity on one process).
    grads = all_reduce_mean(result.grads)
    raw = getattr(opt_krnet, "optimizer", opt_krnet)
    for p, g in zip(params, grads):
        p.grad = g.to(p.dtype)
    # The raw step keeps trainer.global_step counting student steps, i.e. training iterations.
    raw.step()
    raw.zero_grad(set_to_none=True)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    return result, {"train/loss_meta": result.meta_loss, "train/meta_grad_norm": norm}


def real_step_after_meta(
    module: SRModule,
    inner: InnerGradient,
    opt_student: Any,
    gt: torch.Tensor,
    sr_t: torch.Tensor | None,
    feats_t: Mapping[str, torch.Tensor] | None,
) -> dict[str, torch.Tensor]:
    """The real student step with the updated KRNets, reusing the meta step's inner gradient.

    The loss terms are evaluated on the student's outputs saved by the meta step; the student's gradient
    is the meta step's plus J^T of the change of the KD terms' output gradients (``InnerGradient.at``, a
    backward through the student's trunk graph recorded by the meta backward's forward-mode pass; the
    student does not run again). Gradients are averaged across ranks here (no DDP backward runs in this
    iteration).

    Returns:
        The loss terms, as ``Distiller.forward`` returns them.
    """
    distiller = module.distiller
    leaves, (sr, feats) = inner.leaves()
    side = [p for p in distiller.student_side_parameters() if p.requires_grad]
    with torch.enable_grad(), frozen(distiller.meta_parameters()):
        terms = distiller(sr, feats, gt, sr_t=sr_t, feats_t=feats_t)
        grads = torch.autograd.grad(terms["loss"], leaves + side, allow_unused=True)
    params = inner.params + side
    grads = inner.at(grads[: len(leaves)]) + list(grads[len(leaves) :])
    present = [(p, g) for p, g in zip(params, grads) if g is not None]
    opt_student.zero_grad(set_to_none=True)
    for (p, _), g in zip(present, all_reduce_mean([g for _, g in present])):
        p.grad = g
    opt_student.step()
    opt_student.zero_grad(set_to_none=True)  # no .grad left for a later DDP backward to accumulate into
    return terms
