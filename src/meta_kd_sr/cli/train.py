"""``meta-kd-sr-train``: train a network (supervised, KD baseline or meta KD) from the Hydra config."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from meta_kd_sr.cli import config_dir
from meta_kd_sr.module import SRModule
from meta_kd_sr.teacher import load_teacher

log = logging.getLogger(__name__)


def build_module(cfg: DictConfig) -> SRModule:
    """The LightningModule of ``cfg``: student, frozen teacher, distiller, optimizers, meta settings."""
    student = instantiate(cfg.model)
    teacher = None
    if cfg.get("teacher") and cfg.teacher.get("net"):
        teacher = load_teacher(
            instantiate(cfg.teacher.net), cfg.teacher.get("ckpt_path"), cfg.teacher.get("format")
        )
    distiller = instantiate(
        cfg.distill,
        student_channels=dict(student.feature_channels),
        teacher_channels=dict(teacher.feature_channels) if teacher is not None else None,
    )
    return SRModule(
        student=student,
        teacher=teacher,
        distiller=distiller,
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
        meta=OmegaConf.to_container(cfg.meta, resolve=True),
        scale=cfg.scale,
        val_self_ensemble=cfg.val.self_ensemble,
        val_tile=cfg.val.tile,
        student_config=OmegaConf.to_container(cfg.model, resolve=True),
        teacher_config=OmegaConf.to_container(cfg.teacher, resolve=True) if teacher is not None else None,
    )


def _instantiate_dict(group: DictConfig | None) -> list[Any]:
    return [instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured run and return its final metrics and checkpoint paths."""
    pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=_instantiate_dict(cfg.get("callbacks")),
        logger=_instantiate_dict(cfg.get("logger")) or False,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("resume"))
    ckpt_cb = trainer.checkpoint_callback
    result = {
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
        "best_ckpt": getattr(ckpt_cb, "best_model_path", "") or None,
        "last_ckpt": getattr(ckpt_cb, "last_model_path", "") or None,
        "output_dir": str(output_dir),
        "global_step": trainer.global_step,
    }
    if trainer.is_global_zero:
        (output_dir / "train_result.json").write_text(json.dumps(result, indent=2))
        log.info("train result: %s", json.dumps(result))
    return result


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> None:
    """Console entry point (``meta-kd-sr-train``)."""
    train(cfg)


if __name__ == "__main__":
    main()
