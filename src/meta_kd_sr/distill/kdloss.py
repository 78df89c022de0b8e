"""The contract between a feature-KD loss and the :class:`~meta_kd_sr.distill.distiller.Distiller`.

A KD loss subclasses :class:`KDLoss`, declares what the Distiller must do for it with class flags, and keeps
the constructor contract: the Distiller builds one instance per distilled position (one in all when
``pairwise``) as ``loss(channels=C_t, student_channels=C_s)``, with the teacher and student widths at that
position (``None`` when the Distiller was not given them); the loss's own options come first or as keywords
(a Hydra ``_partial_: true`` config fills them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor, nn


class KDLoss(nn.Module):
    """Base of the feature-KD losses; subclasses set the flags and implement ``forward``.

    ``forward(f_s, f_t)`` gets the student feature (through the adapter when ``needs_adapter``, scaled by
    the Distiller's ``feature_scale``) and the detached teacher feature of one position and returns a scalar;
    pairwise losses get the lists of both across positions instead.

    Flags (class attributes):
        pairwise: called once with the lists of features across positions (FSP).
        needs_adapter: compares features channel by channel, so a narrower student feature goes through a
            1x1 conv adapter (trained with the student, dropped at inference).
        uses_raw_student: ``forward`` also receives ``f_s_raw=``, the student feature before the adapter.
        needs_channels: the constructor needs ``channels``: the Distiller must be given ``teacher_channels``.

    Args:
        channels: teacher width at the position (``None``: not known).
        student_channels: student width at the position (``None``: not known).
    """

    pairwise: ClassVar[bool] = False
    needs_adapter: ClassVar[bool] = False
    uses_raw_student: ClassVar[bool] = False
    needs_channels: ClassVar[bool] = False

    def __init__(self, channels: int | None = None, student_channels: int | None = None) -> None:
        super().__init__()
        self.channels, self.student_channels = channels, student_channels

    def prepare(self, f_s: Tensor, f_t: Tensor, f_s_raw: Tensor) -> Tensor | None:
        """The loss's input that its own parameters do not change, or ``None`` (the default: nothing).

        Called without a graph. What it returns is passed back as ``forward(..., prepared=...)`` for
        evaluations on the same features while only the loss's parameters change (the two evaluations of a
        meta iteration); a loss that returns something must accept that keyword.
        """
        return None


def loss_class(factory: Callable[..., Any]) -> type[KDLoss]:
    """The ``KDLoss`` subclass a factory builds (a class, or ``functools.partial`` of one).

    Raises:
        ValueError: the factory is neither.
    """
    target = factory
    while isinstance(target, functools.partial):
        target = target.func
    if not (isinstance(target, type) and issubclass(target, KDLoss)):
        name = getattr(target, "__name__", type(target).__name__)
        raise ValueError(
            f"the KD loss must be a subclass of meta_kd_sr.distill.KDLoss (or a functools.partial of one), "
            f"got {name}: subclass KDLoss, declare its flags and accept channels=, student_channels="
        )
    return target
