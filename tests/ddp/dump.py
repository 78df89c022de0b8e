"""A callback that saves each rank's state and what it saw, for the DDP tests (see ``run_plan.py``)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.nn.parallel import DistributedDataParallel


def _cpu(state: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def trainable_state(module: pl.LightningModule) -> dict:
    """Student, KRNets and adapters of an ``SRModule`` (CPU copies)."""
    distiller = module.distiller
    return {
        "student": _cpu(module.student.state_dict()),
        "krnets": _cpu(distiller.kd_losses.state_dict()),
        "adapters": _cpu(distiller.adapters.state_dict()),
    }


def rank_state(trainer: pl.Trainer, module: pl.LightningModule) -> dict:
    """Final state, step count and logged metrics of this rank."""
    return {
        "world_size": trainer.world_size,
        "rank": trainer.global_rank,
        "global_step": trainer.global_step,
        **trainable_state(module),
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
    }


def fingerprints(items: dict) -> list[float]:
    """One number per sample of a batch ``{"lq", "gt"}``: identifies which crop a rank trained on."""
    lq = items["lq"].detach().double().cpu()
    weights = torch.arange(1, lq[0].numel() + 1, dtype=torch.float64)
    return (lq.flatten(1) * weights).sum(1).tolist()


class StateDump(pl.Callback):
    """Write ``<path>/rank<r>.pt``: initial and final state, DDP's exclusions, the samples of every step.

    With ``perturb_krnets``, ranks other than 0 shift their KRNets before the fit starts (a different
    initialisation per rank), which ``SRModule.on_fit_start`` must undo by broadcasting rank 0's.
    """

    def __init__(self, path: str, perturb_krnets: bool = False) -> None:
        self.path = Path(path)
        self.perturb_krnets = perturb_krnets
        self.initial: dict = {}
        self.ddp: dict = {}
        self.samples: list[dict] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.perturb_krnets and trainer.global_rank > 0:  # ranks must still start from rank 0's KRNets
            with torch.no_grad():
                for p in pl_module.distiller.kd_losses.parameters():
                    p.add_(0.5)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial = trainable_state(pl_module)  # after SRModule.on_fit_start broadcast the KRNets
        model = trainer.strategy.model
        if isinstance(model, DistributedDataParallel):
            wrapped = {id(p) for p in model._module_parameters}
            self.ddp = {
                "ignored": sorted(model.parameters_to_ignore),
                "wrapped": [
                    n for n, p in pl_module.named_parameters() if id(p) in wrapped and p.requires_grad
                ],
                "find_unused_parameters": model.find_unused_parameters,
            }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.samples.append({split: fingerprints(items) for split, items in batch.items()})

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        state = rank_state(trainer, pl_module)
        state.update(initial=self.initial, ddp=self.ddp, samples=self.samples, iterations=len(self.samples))
        torch.save(state, self.path / f"rank{trainer.global_rank}.pt")
