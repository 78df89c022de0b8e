"""Health of the meta signal: how strong the KRNets' meta-gradient is, and whether their updates are noise.

The meta-gradient of the KRNets is small (about 1e-5 at the start of a tiny run) and shrinks as the student
converges. Adam normalises it away, so a KRNet keeps moving at its learning rate even when the gradient it
follows is mostly noise. ``MetaHealth`` logs three numbers at every applied KRNet step:

- ``train/meta_grad_norm`` (logged by the iteration itself): the L2 norm of the rank-averaged meta-gradient;
- ``train/krnet_drift``: ||phi - phi_0|| / ||phi_0||, how far the KRNets moved from where meta-learning began;
- ``train/meta_noise_share``: the share of KRNet weights whose meta-gradient is noise-dominated, i.e. whose
  mean over a window of meta steps is smaller in magnitude than its standard deviation over that window
  (|mean g| < sd g). The window is exponential with time constant ``window`` meta steps (mean and second
  moment as Adam keeps them, bias-corrected); the share is logged once ``window`` steps have been seen;
- ``train/meta_snr``: the median over KRNet weights of |mean g| / sd g over the same window, the
  signal-to-noise ratio of one meta step (the share says how many weights sit below 1, this how far).

A weight whose |mean| < sd gets an Adam update whose sign flips from step to step: it random-walks instead
of following the meta objective. A share near 1 says the KRNets are driven by noise. For reference, a pure
noise gradient (i.i.d., zero mean) gives a share close to 1; a constant gradient gives 0.

Every rank sees the same averaged meta-gradient, so the state is identical on every rank; it is saved in
checkpoints (``state_dict``) so a resumed run continues the same window and drift reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


class MetaHealth:
    """Running statistics of the KRNet meta-gradients (see the module docstring).

    Args:
        window: time constant, in meta steps, of the exponential window of the noise share (>= 2).
    """

    def __init__(self, window: int = 50) -> None:
        if int(window) < 2:
            raise ValueError(f"meta.health_window must be >= 2 meta steps, got {window}")
        self.window = int(window)
        self.beta = 1.0 - 1.0 / self.window
        self.steps = 0
        self.phi0: Tensor | None = None
        self.mean: Tensor | None = None
        self.sq: Tensor | None = None

    @staticmethod
    def _flat(tensors: Sequence[Tensor]) -> Tensor:
        return torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])

    def start(self, params: Sequence[Tensor]) -> None:
        """Take ``params`` (the KRNets before their first update) as the drift reference phi_0."""
        self.phi0 = self._flat(params).clone()

    def update(self, params: Sequence[Tensor], grads: Sequence[Tensor]) -> dict[str, Tensor]:
        """Add one applied meta-gradient ``grads`` (after the KRNet step to ``params``); return the logs.

        Args:
            params: the KRNet parameters after the step.
            grads: the meta-gradients of that step, same order (rank-averaged, finite).
        """
        g = self._flat(grads)
        if self.phi0 is None:  # no start() before the first step: drift is measured from these weights
            self.start(params)
        if self.mean is None or self.sq is None or self.mean.shape != g.shape:
            self.mean, self.sq, self.steps = torch.zeros_like(g), torch.zeros_like(g), 0
        # state restored from a checkpoint (CPU) follows the gradients' device (a CPU run resumed on a GPU)
        self.mean, self.sq = self.mean.to(g.device), self.sq.to(g.device)
        assert self.phi0 is not None
        self.phi0 = self.phi0.to(g.device)
        self.steps += 1
        self.mean.mul_(self.beta).add_(g, alpha=1 - self.beta)
        self.sq.mul_(self.beta).addcmul_(g, g, value=1 - self.beta)
        phi = self._flat(params)
        scale = torch.linalg.vector_norm(self.phi0).clamp_min(1e-30)
        drift = torch.linalg.vector_norm(phi - self.phi0) / scale
        logs = {"train/krnet_drift": drift.float()}
        moments = self._moments()
        if moments is not None:
            mean, sd = moments
            logs["train/meta_noise_share"] = (mean.abs() < sd).to(torch.float32).mean()
            logs["train/meta_snr"] = (mean.abs() / sd.clamp_min(1e-30)).median().to(torch.float32)
        return logs

    def _moments(self) -> tuple[Tensor, Tensor] | None:
        """Bias-corrected mean and sd of every weight's meta-gradient; ``None`` before ``window`` steps."""
        if self.mean is None or self.sq is None or self.steps < self.window:
            return None
        correction = 1.0 - self.beta**self.steps
        mean, sq = self.mean / correction, self.sq / correction
        return mean, (sq - mean.square()).clamp_min(0).sqrt()

    def noise_share(self) -> Tensor | None:
        """The share of weights with |mean g| < sd g over the window; ``None`` before ``window`` steps."""
        moments = self._moments()
        return None if moments is None else (moments[0].abs() < moments[1]).to(torch.float32).mean()

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers (safe for ``torch.load(weights_only=True)``)."""
        return {
            "window": self.window,
            "steps": self.steps,
            "phi0": self.phi0,
            "mean": self.mean,
            "sq": self.sq,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved; with another window, keep phi_0 and start a new window."""
        self.phi0 = state["phi0"]
        if int(state["window"]) == self.window:
            self.steps, self.mean, self.sq = int(state["steps"]), state["mean"], state["sq"]
        else:
            self.steps, self.mean, self.sq = 0, None, None
