"""Training time of a run, measured inside the run: a Lightning callback added by a Hydra override.

``+callbacks.bench_timer._target_=quality.timing.IterationTimer +callbacks.bench_timer.path=<file>`` (with
``benchmarks/`` on ``PYTHONPATH``) makes each training process write one JSON segment, rewritten every few
seconds and at the end of fit: the training iterations it ran and the time they took, from the end of one
iteration to the end of the next, as wall time (``seconds``) and as the process's CPU time
(``cpu_seconds``, all its threads). With one torch thread on an otherwise idle core the two agree; on a busy
machine the wall time also counts the time other processes held the core, the CPU time does not.
Validation (its time is subtracted), process start-up, model building, and the export and evaluation after
fit are not counted. A resumed run adds a segment; a killed process leaves its last flush, so replayed
iterations count in both the time and the iteration total.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

FLUSH_S = 5.0


class IterationTimer(pl.Callback):
    """Write ``{"iterations", "seconds", "cpu_seconds", "start_step", "end_step"}`` of this process.

    Args:
        path: the segment file of the run; this process writes ``<stem>.<start step>-<pid>.json`` beside
            it, so every process of a resumed run keeps its own segment.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)
        self._segment: dict[str, Any] = {}
        self._mark = self._cpu_mark = 0.0
        self._paused_at: tuple[float, float] | None = None
        self._flushed = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start this process's segment at the current iteration."""
        step = int(trainer.global_step)
        name = f"{self.path.stem}.{step:09d}-{os.getpid()}.json"
        self._segment = {"file": str(self.path.with_name(name)), "start_step": step, "end_step": step}
        self._segment |= {"iterations": 0, "seconds": 0.0, "cpu_seconds": 0.0}
        self._mark = self._flushed = time.perf_counter()
        self._cpu_mark = time.process_time()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        """Add the time since the previous iteration ended (data loading included)."""
        now, cpu = time.perf_counter(), time.process_time()
        self._segment["seconds"] += now - self._mark
        self._segment["cpu_seconds"] += cpu - self._cpu_mark
        self._segment["iterations"] += 1
        self._segment["end_step"] = int(trainer.global_step)
        self._mark, self._cpu_mark = now, cpu
        if now - self._flushed > FLUSH_S:
            self._write()
            self._flushed = now

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Stop the clock during validation."""
        self._paused_at = (time.perf_counter(), time.process_time()) if self._segment else None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Restart the clocks: the validation's time is not training time."""
        if self._paused_at is not None:
            self._mark += time.perf_counter() - self._paused_at[0]
            self._cpu_mark += time.process_time() - self._paused_at[1]
            self._paused_at = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the finished segment."""
        if self._segment:
            self._write()

    def _write(self) -> None:
        target = Path(self._segment["file"])
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps({k: v for k, v in self._segment.items() if k != "file"}))
        os.replace(tmp, target)


def read_segments(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every segment written for the run whose timer file is ``path`` (in start order)."""
    path = Path(path)
    files = sorted(path.parent.glob(f"{path.stem}.*-*.json"))
    return [json.loads(f.read_text()) for f in files]
