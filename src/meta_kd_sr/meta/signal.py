"""Whole-run meta signal: does a KRNet weight's meta-gradient keep one direction over a run?

For each KRNet weight, over the N finite meta-gradients g_1 ... g_N of a run (rank-averaged, one per meta
step, before any accumulation),

    z = |sum_t g_t| / (sd(g) * sqrt(N)) = sqrt(N) * |mean g| / sd g,

with sd the sample standard deviation (N - 1 degrees of freedom): the |t| statistic of the hypothesis "this
weight's meta-gradient has mean zero". If the meta-gradient of a weight is pure noise (independent steps, mean
zero), z follows |t_(N-1)|, i.e. about a half-normal for a few hundred steps or more: a share 0.0027 of the
weights above 3 and a median of 0.674. A weight with a consistent direction has z growing like sqrt(N).

``MetaSignal`` keeps Welford's running mean and sum of squared deviations per weight in float64 (exact zero
spread for a constant stream; no cancellation of a large mean), saved in checkpoints; ``z`` and ``summary``
read them; ``export`` writes them as a small ``.pt`` file. ``half_normal_share`` is what pure noise gives.
The matching control run is ``meta.control=shuffle`` (``meta.settings``), whose meta targets carry no
information about its meta inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from meta_kd_sr.runtime.atomic import atomic_path

HALF_NORMAL_MEDIAN = math.sqrt(2.0) * torch.special.erfinv(torch.tensor(0.5, dtype=torch.float64)).item()


def half_normal_share(threshold: float = 3.0) -> float:
    """P(|N(0, 1)| > threshold): the share of pure-noise weights above ``threshold`` (0.0027 at 3)."""
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    return math.erfc(threshold / math.sqrt(2.0))


class SignalSummary(NamedTuple):
    """The z distribution of a run against pure noise.

    Attributes:
        steps: N, the meta-gradients seen.
        weights: KRNet weights (entries of z).
        threshold: the z threshold of ``share_above``.
        share_above: share of weights with z > threshold.
        noise_share_above: the same share for pure noise (half-normal), e.g. 0.0027 at 3.
        median: median of z over weights.
        noise_median: the half-normal's median, 0.674.
    """

    steps: int
    weights: int
    threshold: float
    share_above: float
    noise_share_above: float
    median: float
    noise_median: float


def summarize_z(z: Tensor, steps: int, threshold: float = 3.0) -> SignalSummary:
    """Compare per-weight z values (``z``: (P,), from ``MetaSignal.z`` or a saved export) with pure noise."""
    z = z.detach().reshape(-1).to(torch.float64)
    if z.numel() == 0:
        raise ValueError("z is empty: no KRNet weights")
    share = (z > threshold).to(torch.float64).mean().item()
    noise = half_normal_share(threshold)
    return SignalSummary(
        int(steps), z.numel(), float(threshold), share, noise, z.median().item(), HALF_NORMAL_MEDIAN
    )


class MetaSignal:
    """Welford statistics of every KRNet weight's meta-gradient over a run (see the module docstring)."""

    def __init__(self) -> None:
        self.steps = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, grads: Sequence[Tensor]) -> None:
        """Add one meta-gradient (rank-averaged, finite), one tensor per KRNet parameter."""
        g = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in grads])
        if self.mean is None or self.m2 is None or self.mean.shape != g.shape:
            self.steps, self.mean, self.m2 = 0, torch.zeros_like(g), torch.zeros_like(g)
        # statistics restored from a checkpoint (on CPU) follow the gradients to their device
        self.mean, self.m2 = self.mean.to(g.device), self.m2.to(g.device)
        self.steps += 1
        delta = g - self.mean
        self.mean.add_(delta / self.steps)
        self.m2.addcmul_(delta, g - self.mean)

    def z(self) -> Tensor:
        """The z of every weight, (P,) float64: sqrt(N) |mean| / sd (inf where sd is 0 and the mean is not).

        Raises:
            ValueError: fewer than 2 meta-gradients seen (no spread yet).
        """
        if self.mean is None or self.m2 is None or self.steps < 2:
            raise ValueError(f"z needs at least 2 meta-gradients, got {self.steps}")
        sd = (self.m2.clamp_min(0) / (self.steps - 1)).sqrt()
        signal = self.mean.abs() * math.sqrt(self.steps)
        z = signal / sd
        return torch.where(sd > 0, z, torch.where(signal > 0, torch.inf, 0.0))

    def summary(self, threshold: float = 3.0) -> SignalSummary:
        """``summarize_z`` of this run's z."""
        return summarize_z(self.z(), self.steps, threshold)

    def export(self, path: str | Path, named: Sequence[tuple[str, Tensor]], control: str) -> Path:
        """Write z, its summary and the weights' names to ``path`` (atomic; loads with ``weights_only=True``).

        Args:
            path: the ``.pt`` file to write.
            named: ``(name, parameter)`` of the KRNet parameters, in the order of the meta-gradients (z is
                their flattened concatenation; ``names`` and ``numels`` in the file say which entry is which).
            control: ``meta.control`` of the run ("none" or "shuffle"), so a comparison knows which is which.
        """
        numels = [int(p.numel()) for _, p in named]
        stats = 0 if self.mean is None else self.mean.numel()
        if sum(numels) != stats:
            raise ValueError(f"the parameters have {sum(numels)} entries, the statistics {stats}")
        record = {
            "z": self.z().to(torch.float32),
            "steps": self.steps,
            "names": [n for n, _ in named],
            "numels": numels,
            "control": control,
            "summary": self.summary()._asdict(),
        }
        with atomic_path(path) as tmp:
            torch.save(record, tmp)
        return Path(path)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers (safe for ``torch.load(weights_only=True)``)."""
        return {"steps": self.steps, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved."""
        self.steps, self.mean, self.m2 = int(state["steps"]), state["mean"], state["m2"]
