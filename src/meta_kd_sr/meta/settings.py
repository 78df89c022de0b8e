"""How and when the KRNets are meta-learned: the ``meta`` config group (``conf/meta/default.yaml``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from meta_kd_sr.meta.step import ENGINES, PseudoStep

# The meta objective L_meta(S_theta'(x_m), y_m) by name.
META_OBJECTIVES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "l1": F.l1_loss,
    "mse": F.mse_loss,
}
KRNET_OPTIMIZERS = ("adam", "sgd", "momentum")
CONTROLS = ("none", "shuffle")

# Trainer precisions a meta iteration honours. Its gradients come from ``torch.autograd.grad``, outside
# Lightning's GradScaler, so float16 (never loss-scaled) is refused, and so are half-precision weights, whose
# pseudo step theta - alpha * g would round away most of alpha * g.
META_PRECISIONS = ("32-true", "64-true", "bf16-mixed")


def precision_problem(precision: str, meta_enabled: bool) -> str | None:
    """Why ``trainer.precision=precision`` cannot train this run (``None``: it can).

    Without meta-learning every Lightning precision goes through Lightning's own backward and optimizer
    step. With meta-learning only ``META_PRECISIONS`` are honoured (see the comment above them).
    """
    if not meta_enabled or precision in META_PRECISIONS:
        return None
    return (
        f"trainer.precision={precision} is not supported with meta-learning (its gradients are not "
        f"loss-scaled): use one of {', '.join(META_PRECISIONS)} (bf16-mixed on GPUs), or distill=mkd_frozen"
    )


@dataclass
class MetaSettings:
    """How and when the KRNets are meta-learned (docs/method.md).

    Attributes:
        enabled: run the meta step when the distiller has meta parameters (``False``: KRNets stay frozen).
        engine: "higher" (default) or "func" (``torch.func.functional_call``); same meta-gradient.
            "reference" is the textbook ``create_graph=True`` pseudo step the two are tested against
            (slower; ``meta_kd_sr.meta.reference``).
        pseudo: pseudo-step kind: "sgd" (fixed ``alpha``), "sgd_lr" (``lr_factor`` x the student's current
            learning rate) or "adam_state" (Adam-shaped step from the real optimizer's state).
        alpha: the fixed pseudo-step size of "sgd"; the meta-gradient is proportional to it.
        lr_factor: multiplier of the learning rate for "sgd_lr" / "adam_state".
        every_n_steps: run the meta step every n training iterations.
        warmup_steps: iterations before the first meta step.
        lr: learning rate of the KRNet optimizer (the scheduler of the student is applied to it too).
        betas: KRNet Adam betas (optimizer "adam").
        sync: under DDP, "exact" averages the pseudo gradient across ranks differentiably before theta' is
            formed, so N ranks with batch b compute the update of one process with batch N*b; "local" forms
            theta' from each rank's own batch (one collective less per meta step; an approximation: the
            KRNets still get the rank-averaged meta-gradient and stay identical, but the meta-gradient is
            that of N pseudo steps on batches of b, not of one on N*b). Same result on one process.
        objective: the meta loss on the meta batch at theta': "l1" (the bilevel objective) or "mse" (the
            quantity PSNR measures).
        health_window: time constant, in meta steps, of the meta-gradient noise share that
            ``meta.health.MetaHealth`` logs (``train/meta_noise_share``).
        inner_steps: K, the differentiable pseudo steps that form theta' (an unrolled lookahead), each on
            the same train batch and teacher features (``meta.step.meta_gradient``). 1: one pseudo step.
        accumulate: M, meta steps whose meta-gradients are averaged into one KRNet step
            (``meta.accumulate.MetaAccumulator``); 1: a KRNet step per meta step.
        optimizer: the KRNet optimizer: "adam" (``lr``, ``betas``), "sgd" (phi - lr * g) or "momentum"
            (SGD with heavy-ball ``momentum``), whose steps follow the mean meta-gradient in size and sign.
        momentum: the momentum of optimizer "momentum", in [0, 1).
        control: "none", or "shuffle": a control whose meta targets carry no information, each meta input
            paired with the target of the next image of its meta batch (a roll by one along the batch, on
            each rank), so the whole-run signal (``meta.signal``) can be compared with what noise gives.
        signal_file: file name, in the run dir (``trainer.default_root_dir``), that the whole-run z per KRNet
            weight is written to at the end of training (``meta.signal.MetaSignal.export``); None writes
            nothing. The statistics are kept, and saved in checkpoints, either way.
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
    objective: str = "l1"
    health_window: int = 50
    inner_steps: int = 1
    accumulate: int = 1
    optimizer: str = "adam"
    momentum: float = 0.9
    control: str = "none"
    signal_file: str | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"meta.engine must be one of {ENGINES}, got {self.engine!r}")
        if self.every_n_steps < 1:
            raise ValueError(f"meta.every_n_steps must be >= 1, got {self.every_n_steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"meta.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.sync not in ("exact", "local"):
            raise ValueError(f"meta.sync must be 'exact' or 'local', got {self.sync!r}")
        if self.pseudo == "adam_state" and self.enabled and self.warmup_steps < 1:
            raise ValueError(
                "meta.pseudo=adam_state forms the pseudo step from the real Adam state, which exists only "
                "after the first student step: set meta.warmup_steps >= 1"
            )
        if self.objective not in META_OBJECTIVES:
            choices = tuple(META_OBJECTIVES)
            raise ValueError(f"meta.objective must be one of {choices}, got {self.objective!r}")
        if self.health_window < 2:
            raise ValueError(f"meta.health_window must be >= 2 meta steps, got {self.health_window}")
        self._check_levers()
        self.betas = tuple(float(b) for b in self.betas)
        self.step_settings = PseudoStep(
            kind=self.pseudo, alpha=self.alpha, lr_factor=self.lr_factor, inner_steps=self.inner_steps
        )

    def _check_levers(self) -> None:
        """Refuse a bad accumulation, KRNet optimizer or control (the pseudo step checks its own)."""
        if int(self.accumulate) < 1:
            raise ValueError(f"meta.accumulate must be >= 1 meta steps, got {self.accumulate}")
        if self.optimizer not in KRNET_OPTIMIZERS:
            raise ValueError(f"meta.optimizer must be one of {KRNET_OPTIMIZERS}, got {self.optimizer!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"meta.momentum must be in [0, 1), got {self.momentum}")
        if self.control not in CONTROLS:
            raise ValueError(f"meta.control must be one of {CONTROLS}, got {self.control!r}")
        name = self.signal_file
        if name is not None and (Path(name).name != name or not name.endswith(".pt")):
            raise ValueError(f"meta.signal_file must be a file name ending in .pt, or null, got {name!r}")

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values (safe for ``torch.load(weights_only=True)``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def meta_loss_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``(sr, gt) -> scalar``: the meta objective named by ``objective``."""
        return META_OBJECTIVES[self.objective]

    def is_due(self, iteration: int) -> bool:
        """Whether iteration ``iteration`` (0-based, counted in student steps) runs the meta step."""
        done = iteration - self.warmup_steps
        return done >= 0 and done % self.every_n_steps == 0

    def build_optimizer(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The KRNet optimizer named by ``optimizer``: Adam (``lr``, ``betas``), SGD, or SGD with momentum."""
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, betas=(self.betas[0], self.betas[1]))
        momentum = self.momentum if self.optimizer == "momentum" else 0.0
        return torch.optim.SGD(params, lr=self.lr, momentum=momentum)

    def meta_targets(self, meta_gt: torch.Tensor) -> torch.Tensor:
        """The meta targets, (B_m, 3, H, W): ``meta_gt``, or rolled by one image for ``control=shuffle``.

        Raises:
            ValueError: ``control=shuffle`` with a meta batch of one image (it has no other target to take).
        """
        if self.control == "none":
            return meta_gt
        if meta_gt.shape[0] < 2:
            raise ValueError(
                f"meta.control=shuffle pairs each meta input with another image's target and needs a meta "
                f"batch of >= 2 images per rank, got {meta_gt.shape[0]}"
            )
        return torch.roll(meta_gt, shifts=1, dims=0)
