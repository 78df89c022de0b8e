"""What a dashboard shows of a whole run: its full config, and its final results as a table.

W&B gets the results as a ``wandb.Table`` (``results``); TensorBoard as a markdown text (``results``) and an
hparams session (the config against the final metrics). Other loggers (CSV) get neither: ``eval.json`` in
the run dir holds the results. Nothing here imports wandb or tensorboard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger

RESULT_COLUMNS = ["set", "n_images", "psnr_y", "ssim_y"]


def results_rows(result: Mapping[str, Any]) -> list[list[Any]]:
    """The final metrics of a run (``train()``'s result, as in ``eval.json``), one row per image set.

    Rows: ``val`` (the best checkpoint on the validation set), ``val_teacher`` when the teacher was
    scored, then each benchmark folder. Columns: ``RESULT_COLUMNS`` (``None`` where not measured).
    """
    rows = []
    val = result.get("val") or {}
    if "psnr_y" in val:
        rows.append(["val", val.get("n_images"), val["psnr_y"], val.get("ssim_y")])
    teacher = (result.get("train_metrics") or {}).get("val/teacher_psnr_y")
    if teacher is not None:
        rows.append(["val_teacher", val.get("n_images"), teacher, None])  # scored on the same val images
    for name, scores in (result.get("benchmarks") or {}).items():
        if isinstance(scores, Mapping) and "psnr_y" in scores:
            rows.append([name, scores.get("n_images"), scores["psnr_y"], scores.get("ssim_y")])
    return rows


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """``rows`` as a markdown table (floats with 4 decimals, ``None`` as blank)."""

    def cell(value: Any) -> str:
        return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def final_metrics(rows: Sequence[Sequence[Any]]) -> dict[str, float]:
    """``{"results/<set>/<metric>": value}`` of the result rows (for scalar and hparams views)."""
    out = {}
    for row in rows:
        for column, value in zip(RESULT_COLUMNS[2:], row[2:]):
            if isinstance(value, (int, float)):
                out[f"results/{row[0]}/{column}"] = float(value)
    return out


class RunSummary(pl.Callback):
    """Log the run's full config when training starts; ``log_results`` logs its final results table.

    Lightning logs the module's own hyper-parameters just before training starts; the full config is logged
    after them, so its values win where both name a key (``meta``).

    Args:
        config: the resolved config (``meta_kd_sr.cli.loggers.run_config``).
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Send the full config to every logger (rank 0 only: the loggers' own rule)."""
        for logger in trainer.loggers:
            logger.log_hyperparams(self.config)

    def log_results(
        self, loggers: Sequence[Logger], result: Mapping[str, Any], step: int | None = None
    ) -> None:
        """The final results (``results_rows``) as a W&B table / TensorBoard text and hparams; call on rank 0.

        Args:
            loggers: the trainer's loggers.
            result: what ``train()`` returns (the content of ``eval.json``).
            step: the step to log at (TensorBoard; W&B logs tables at its own next step).
        """
        rows = results_rows(result)
        if not rows:
            return
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table("results", columns=RESULT_COLUMNS, data=rows)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("results", markdown_table(RESULT_COLUMNS, rows), step)
                # the config against the final metrics: TensorBoard's HPARAMS tab, one row per run
                logger.log_hyperparams(self.config, metrics=final_metrics(rows), step=step)
                logger.experiment.flush()


def validation_psnr(result: Mapping[str, Any]) -> float | None:
    """The validation PSNR_y: of the best checkpoint (evaluation after fit), else of the last validation.

    ``None`` when the run had no validation. This is what ``meta-kd-sr-train`` returns to a Hydra sweeper.
    """
    val = result.get("val") or {}
    value = val.get("psnr_y", (result.get("train_metrics") or {}).get("val/psnr_y"))
    return None if value is None else float(value)
