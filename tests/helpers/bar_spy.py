"""A callback that records the training progress bar, for the progress tests (a Hydra ``_target_``)."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelSummary, RichProgressBar

RECORDS: list[dict] = []  # what BarSpy saw, one entry per hook call


def _bar_state(bar: pl.Callback) -> dict:
    if isinstance(bar, RichProgressBar):
        task = bar.train_progress_bar
        return {"n": int(task.completed), "total": task.total}
    tqdm = bar.train_progress_bar
    return {"n": tqdm.n, "total": tqdm.total, "initial": tqdm.initial, "postfix": tqdm.postfix}


class BarSpy(pl.Callback):
    """Records the training bar after the bar's own hooks (it is configured after the bar)."""

    def on_train_start(self, trainer: pl.Trainer, *args) -> None:
        state = _bar_state(trainer.progress_bar_callback)
        summaries = [type(cb).__name__ for cb in trainer.callbacks if isinstance(cb, ModelSummary)]
        RECORDS.append({"hook": "start", "step": trainer.global_step, "summaries": summaries, **state})

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        state = _bar_state(trainer.progress_bar_callback)
        RECORDS.append(
            {"hook": "batch", "step": trainer.global_step, "epoch": trainer.current_epoch, **state}
        )
