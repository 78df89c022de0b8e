"""The held-out curve of a training run and the converged regime's budget rule.

``+callbacks.bench_curve._target_=quality.curve.HeldoutCurve +callbacks.bench_curve.path=<file>
+callbacks.bench_curve.every_n_steps=<k>`` (with ``benchmarks/`` on ``PYTHONPATH``) scores the student on the
held-out photos every ``k`` iterations and keeps ``[{"step", "psnr_y", "ssim_y"}, ...]`` in ``<file>`` (a
resumed run keeps the points it had). The benchmark's iteration timer is paused meanwhile, so a run's
training time does not count its curve. Steps are ``trainer.global_step``: one optimizer step per iteration,
as in the scratch runs that carry a curve.

Budget rule: a budget N is converged when scratch's held-out PSNR_y moves by less than ``plateau_db`` over the
last quarter of its run, ``|PSNR(N) - PSNR(3N/4)| < plateau_db``; the regime's budget is the smallest such N
of the ladder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from .heldout import HELDOUT, HeldoutPhotos, score
from .timing import IterationTimer


class HeldoutCurve(pl.Callback):
    """Score ``pl_module.student`` on the held-out photos every ``every_n_steps`` iterations.

    Args:
        path: the JSON file of the curve.
        every_n_steps: iterations between two points.
        scale: the SR scale of the run.
    """

    def __init__(self, path: str | os.PathLike, every_n_steps: int, scale: int = 4) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.path, self.every, self.scale = Path(path), int(every_n_steps), int(scale)
        self._photos: HeldoutPhotos | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        """Add a point when the iteration count is a multiple of ``every_n_steps``."""
        step = int(trainer.global_step)
        if step % self.every:
            return
        timers = [cb for cb in trainer.callbacks if isinstance(cb, IterationTimer)]
        for timer in timers:  # the curve is not training time
            timer.on_validation_start(trainer, pl_module)
        self._add_point(step, pl_module.student)
        for timer in timers:
            timer.on_validation_end(trainer, pl_module)

    def _add_point(self, step: int, student: torch.nn.Module) -> None:
        if self._photos is None:
            self._photos = HeldoutPhotos(HELDOUT, self.scale)
        was_training = student.training
        student.eval()
        with torch.no_grad():
            scores = score(student, self._photos)["all"]
        student.train(was_training)
        points = {p["step"]: p for p in read_curve(self.path)}
        points[step] = {"step": step, "psnr_y": scores["psnr_y"], "ssim_y": scores["ssim_y"]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps([points[s] for s in sorted(points)], indent=1))
        os.replace(tmp, self.path)


def read_curve(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The points of a curve file (``[]`` when there is none)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else []


def last_quarter_change(curve: Sequence[Mapping[str, Any]], iterations: int) -> float:
    """``PSNR_y(iterations) - PSNR_y(3 * iterations / 4)`` of a curve.

    Raises:
        ValueError: the curve lacks either point.
    """
    by_step = {int(p["step"]): float(p["psnr_y"]) for p in curve}
    start = 3 * iterations // 4
    missing = [s for s in (start, iterations) if s not in by_step]
    if missing or 4 * start != 3 * iterations:
        raise ValueError(
            f"the curve of a {iterations}-iteration run has no point at steps {missing or [start]}"
        )
    return by_step[iterations] - by_step[start]


def converged(curve: Sequence[Mapping[str, Any]], iterations: int, plateau_db: float) -> bool:
    """Whether the budget rule holds for a run of ``iterations`` with this curve."""
    return abs(last_quarter_change(curve, iterations)) < plateau_db
