"""The values that cross the stages of a training iteration, by name and type.

The teacher forward hands ``TeacherOutputs`` to the iteration; the student's forward is ``StudentOutputs``;
the KRNet step returns a ``KRNetStep`` (whether it skipped, and its logs); the iteration returns an
``IterationResult``. Logs are outputs only: what a later stage decides on travels in a typed field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor

Terms = dict[str, Tensor]  # named loss terms: "loss", "loss_rec", "loss_kd", ...
Logs = dict[str, Tensor]  # namespaced values to log ("train/loss_meta", ...); never read back
# What the iteration steps: a raw torch optimizer, or the wrapper ``LightningModule.optimizers()`` hands over.
AnyOptimizer = torch.optim.Optimizer | LightningOptimizer


class TeacherOutputs(NamedTuple):
    """The frozen teacher on the train batch, computed once without a graph.

    Attributes:
        sr: (B, 3, s*h, s*w) SR image, or ``None`` when no loss reads it (or there is no teacher).
        feats: features by position name, or ``None`` when there is no teacher.
    """

    sr: Tensor | None = None
    feats: dict[str, Tensor] | None = None


class StudentOutputs(NamedTuple):
    """``student(lq, return_feats=True)``: the SR image (B, 3, s*h, s*w) and the features by position name."""

    sr: Tensor
    feats: dict[str, Tensor]


@dataclass(frozen=True)
class KRNetStep:
    """What the KRNet step of a meta iteration did.

    Attributes:
        skipped: the averaged meta-gradient (or meta loss) was not finite, so nothing changed.
        logs: ``train/loss_meta``, ``train/meta_grad_norm``, ``train/meta_skip`` and the health logs.
    """

    skipped: bool
    logs: Logs = field(default_factory=dict)


@dataclass(frozen=True)
class IterationResult:
    """One training iteration: the student step's loss terms, the values to log, the KRNet step if any.

    Attributes:
        terms: the student step's loss terms (``loss``, ``loss_rec``, ...).
        logs: the meta step's values to log (empty for a plain iteration).
        krnet: the KRNet step of a meta iteration; ``None`` for a plain iteration.
    """

    terms: Terms
    logs: Logs
    krnet: KRNetStep | None = None

    @property
    def krnet_skipped(self) -> bool:
        """Whether this iteration's KRNet update was skipped for a non-finite meta-gradient."""
        return self.krnet is not None and self.krnet.skipped
