"""Progress bars that count iterations: total ``trainer.max_steps``, across epoch boundaries.

Training draws fixed-size epochs of ``samples_per_epoch`` samples, so Lightning's bars count the batches of
one epoch and start again at every epoch. :class:`StepProgressBar` (tqdm) and :class:`RichStepProgressBar`
(Rich) count ``trainer.global_step`` (iterations: the KRNet step does not count) towards ``max_steps``
instead; a resumed run starts at the step it resumes from; validations in between show their own bar. The
postfix shows the metrics logged with ``prog_bar=True`` (``loss``, ``loss_rec``, ``loss_kd``, ``loss_meta``,
``val/psnr_y``), training terms without their ``train/`` prefix. Without ``max_steps`` (``-1``), or with
``max_epochs`` set too, both behave as Lightning's bars.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelSummary, ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm


def step_total(trainer: pl.Trainer) -> int | None:
    """The bar's total: ``trainer.max_steps`` when it alone bounds the run, else ``None`` (count epochs).

    It does with ``max_epochs=-1``, as in every preset; with both limits the bar counts epochs as Lightning's.
    """
    max_steps, max_epochs = trainer.max_steps, trainer.max_epochs
    bounded = max_steps is not None and max_steps > 0 and max_epochs in (None, -1)
    return int(max_steps) if bounded else None


def short_names(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``{"train/loss": v, "val/psnr_y": w}`` -> ``{"loss": v, "val/psnr_y": w}``: the bar has little room."""
    return {k.removeprefix("train/"): v for k, v in metrics.items()}


class _CountsSteps:
    """What both bars share: no reset at epoch starts when counting steps, short metric names."""

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        """Keep counting across epochs (Lightning's bar resets here)."""
        if step_total(trainer) is None:
            super().on_train_epoch_start(trainer, *args)  # type: ignore[misc]

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Move the bar to the global step (``_show_step``) when counting steps; else Lightning's update."""
        if step_total(trainer) is None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)  # type: ignore[misc]
        else:
            self._show_step(trainer, pl_module)

    def _show_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        raise NotImplementedError

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Lightning's progress bar metrics, training terms without their ``train/`` prefix."""
        return short_names(super().get_metrics(trainer, pl_module))  # type: ignore[misc]


class StepProgressBar(_CountsSteps, TQDMProgressBar):
    """Lightning's tqdm bar with the training bar counting iterations to ``max_steps`` (see module doc)."""

    def init_train_tqdm(self) -> Tqdm:
        """The training bar of the whole run: total ``max_steps``, from the step the run starts at."""
        total = step_total(self.trainer)
        if total is None:
            return super().init_train_tqdm()
        return Tqdm(  # Lightning's training bar, with a total and a start
            desc=self.train_description,
            total=total,
            initial=self.trainer.global_step,  # a resumed run: its rate counts this run's steps only
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def _show_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Move the bar to the global step and show the loss terms."""
        bar, step = self.train_progress_bar, trainer.global_step
        if self._should_update(step, bar.total) and not bar.disable:
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Update the metrics; the bar stays open (``leave`` would close it every epoch)."""
        if step_total(trainer) is None:
            super().on_train_epoch_end(trainer, pl_module)
        elif not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)


class RichStepProgressBar(_CountsSteps, RichProgressBar):
    """Lightning's Rich bar with the training bar counting iterations to ``max_steps`` (see module doc)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Add the training task once for the whole run, at the step the run starts from."""
        super().on_train_start(trainer, pl_module)
        total = step_total(trainer)
        if total is None or self.is_disabled or self.progress is None:
            return
        task = self._add_task(total, self.train_description)
        self.train_progress_bar_id = task
        self.progress.update(task, completed=trainer.global_step)
        self.refresh()

    def _show_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Move the bar to the global step and show the loss terms."""
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()


def display_callbacks(callbacks: list[Callback], trainer_cfg: Mapping[str, Any]) -> list[Callback]:
    """``callbacks`` with the display callbacks the trainer's flags allow, and a step bar when none is given.

    ``trainer.enable_progress_bar=false`` drops the configured bar and ``enable_model_summary=false`` the
    configured summary (Lightning refuses the first combination and ignores the second); a run with the bar
    on and no bar configured (``callbacks=none``) gets a :class:`StepProgressBar`.
    """
    show_bar = bool(trainer_cfg.get("enable_progress_bar", True))
    show_summary = bool(trainer_cfg.get("enable_model_summary", True))
    kept = [
        cb
        for cb in callbacks
        if not (isinstance(cb, ProgressBar) and not show_bar)
        and not (isinstance(cb, ModelSummary) and not show_summary)
    ]
    if show_bar and not any(isinstance(cb, ProgressBar) for cb in kept):
        kept.append(StepProgressBar())
    return kept
