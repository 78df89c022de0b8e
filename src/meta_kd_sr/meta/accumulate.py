"""Variance reduction of the KRNet update: the mean of M consecutive meta-gradients drives one KRNet step.

A single meta-gradient of the KRNets is mostly noise (``meta.health``); Adam normalises that noise into steps
of full size. ``MetaAccumulator`` sums the rank-averaged, finite meta-gradients of ``accumulate`` consecutive
meta steps and hands back their mean once the window is full, so the KRNet optimizer steps once per M meta
steps, along a mean whose noise is sqrt(M) times smaller. M = 1 hands every meta-gradient back unchanged (the
same tensors), so the default path is the unaccumulated one, bit for bit.

Every rank sees the same averaged meta-gradients, so the window is identical on every rank; its state is saved
in checkpoints (``state_dict``), so a run resumed mid-window steps where the uninterrupted run steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor


class MetaAccumulator:
    """The running sum of the meta-gradients of the current window (see the module docstring).

    Args:
        accumulate: meta steps per KRNet step (>= 1).
    """

    def __init__(self, accumulate: int = 1) -> None:
        if int(accumulate) < 1:
            raise ValueError(f"meta.accumulate must be >= 1 meta steps, got {accumulate}")
        self.accumulate = int(accumulate)
        self.count = 0
        self.sums: list[Tensor] | None = None

    def add(self, grads: Sequence[Tensor]) -> list[Tensor] | None:
        """Add one meta-gradient; return the window's mean when it completes the window, else ``None``.

        Args:
            grads: the rank-averaged, finite meta-gradient of one meta step, one tensor per KRNet parameter.

        Returns:
            ``sum / accumulate`` per parameter (``grads`` itself when ``accumulate`` is 1), after which the
            window starts empty; ``None`` while the window is filling.
        """
        if self.accumulate == 1:
            return list(grads)
        if self.sums is None:
            self.sums = [g.detach().clone() for g in grads]
        else:
            if len(grads) != len(self.sums):
                raise ValueError(f"expected {len(self.sums)} meta-gradients, got {len(grads)}")
            # a window restored from a checkpoint (on CPU) follows the gradients to their device
            self.sums = [s.to(g.device).add_(g.detach()) for s, g in zip(self.sums, grads)]
        self.count += 1
        if self.count < self.accumulate:
            return None
        mean = [s / self.accumulate for s in self.sums]
        self.count, self.sums = 0, None
        return mean

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers (safe for ``torch.load(weights_only=True)``)."""
        return {"accumulate": self.accumulate, "count": self.count, "sums": self.sums}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved; a window of another size starts empty (partial sum dropped)."""
        if int(state["accumulate"]) == self.accumulate and state["sums"] is not None:
            self.count, self.sums = int(state["count"]), list(state["sums"])
        else:
            self.count, self.sums = 0, None
