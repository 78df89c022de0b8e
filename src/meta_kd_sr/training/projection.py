"""A warning at the start of a CPU run that would take hours: its projected time and the quick alternative.

:class:`ProjectedTime` times a few training iterations after the first (which pays for warm-up), projects
the time to ``trainer.max_steps`` and, when the run is on CPU and the projection exceeds ``warn_hours``,
logs one warning with the projection. It never stops the run: a long CPU run can be what the user wants.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger(__name__)


def projection_text(seconds_per_step: float, steps_left: int) -> str:
    """``"285.0 h (300000 iterations at 3.42 s each)"``: the projected time of ``steps_left`` iterations."""
    hours = seconds_per_step * steps_left / 3600
    return f"{hours:.1f} h ({steps_left} iterations at {seconds_per_step:.2f} s each)"


class ProjectedTime(pl.Callback):
    """Warn once, early in a CPU run, when its projected time to ``max_steps`` exceeds ``warn_hours``.

    Args:
        warn_hours: the projected hours above which a CPU run warns.
        measure_steps: iterations timed (after the first) before projecting.
        clock: seconds (``time.perf_counter``); a test passes its own.
    """

    def __init__(
        self, warn_hours: float = 3.0, measure_steps: int = 5, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        super().__init__()
        if warn_hours <= 0 or measure_steps < 1:
            raise ValueError(f"warn_hours must be > 0 and measure_steps >= 1: {warn_hours}, {measure_steps}")
        self.warn_hours, self.measure_steps, self.clock = warn_hours, measure_steps, clock
        self._start: tuple[int, float] | None = None
        self.projected_s: float | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        """Start timing after the first iteration; project once ``measure_steps`` more have run."""
        if self.projected_s is not None or not trainer.max_steps or trainer.max_steps < 0:
            return
        step, now = trainer.global_step, self.clock()
        if self._start is None:
            self._start = (step, now)
            return
        done = step - self._start[0]
        if done < self.measure_steps:
            return
        per_step = (now - self._start[1]) / done
        steps_left = trainer.max_steps - step
        self.projected_s = per_step * steps_left
        on_cpu = type(trainer.accelerator).__name__ == "CPUAccelerator"
        if on_cpu and self.projected_s > self.warn_hours * 3600 and trainer.is_global_zero:
            log.warning(
                "this CPU run is projected to take %s: for a run of minutes use experiment=tiny_sr "
                "(the bare command's default) or lower trainer.max_steps",
                projection_text(per_step, steps_left),
            )
