"""``meta-kd-sr-train``: train a network (supervised, KD baseline or meta KD) from the Hydra config."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import hydra
import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch import nn

from meta_kd_sr.cli import config_dir
from meta_kd_sr.cli.evaluate import evaluate
from meta_kd_sr.cli.loggers import build_loggers, run_config
from meta_kd_sr.evaluation.summary import RunSummary, validation_psnr
from meta_kd_sr.meta.settings import precision_problem
from meta_kd_sr.models.checkpoint import export_student
from meta_kd_sr.runtime.console import (
    ALEMBIC_NOTE,
    drop_exact_log,
    one_line_errors,
    quiet_known_noise,
    run_outputs,
)
from meta_kd_sr.runtime.finite import NonFiniteError, finite_or_none
from meta_kd_sr.training.module import SRModule
from meta_kd_sr.training.progress import display_callbacks
from meta_kd_sr.training.projection import ProjectedTime
from meta_kd_sr.training.recovery import (
    AtomicCheckpointIO,
    RunRefused,
    RunSettings,
    check_meta_split,
    check_resume,
    check_writable,
    prepare_run_dir,
    weights_fingerprint,
)
from meta_kd_sr.training.sanity import below_bicubic, bicubic_psnr
from meta_kd_sr.training.teacher import MISSING_TEACHER, load_teacher

log = logging.getLogger(__name__)
drop_exact_log(*ALEMBIC_NOTE)  # before Hydra starts an Optuna sweeper, which imports alembic
SPEED_OPTIONS = ("channels_last", "compile_teacher", "compile_student")  # conf/train.yaml: speed


def build_module(cfg: DictConfig) -> SRModule:
    """The LightningModule of ``cfg``: student, frozen teacher, distiller, optimizers, meta settings."""
    student = instantiate(cfg.model)
    teacher = None
    if cfg.get("teacher") and cfg.teacher.get("net"):
        if OmegaConf.is_missing(cfg.teacher, "ckpt_path"):  # ??? in the preset: one line, not OmegaConf's
            raise RunRefused(MISSING_TEACHER)
        teacher = load_teacher(
            instantiate(cfg.teacher.net), cfg.teacher.get("ckpt_path"), cfg.teacher.get("format")
        )
    distiller = instantiate(
        cfg.distill,
        student_channels=_channels(student),
        teacher_channels=_channels(teacher) if teacher is not None else None,
    )
    return SRModule(
        student=student,
        teacher=teacher,
        distiller=distiller,
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
        meta=_container(cfg.meta),
        scale=cfg.scale,
        val_self_ensemble=cfg.val.self_ensemble,
        val_tile=cfg.val.tile,
        **_speed(cfg),
        student_config=_container(cfg.model),
        teacher_config=_teacher_config(cfg, teacher),
    )


def _speed(cfg: DictConfig) -> dict[str, bool]:
    """The ``speed`` options as ``SRModule`` keywords; an unknown one is refused in one line."""
    options = dict(cfg.get("speed") or {})
    unknown = sorted(set(options) - set(SPEED_OPTIONS))
    if unknown:
        raise RunRefused(f"unknown speed option(s) {unknown}: choose from {list(SPEED_OPTIONS)}")
    return {str(name): bool(on) for name, on in options.items()}


def _channels(net: nn.Module) -> dict[str, int]:
    """``net.feature_channels``: the width of each feature position of an SR network."""
    return dict(cast(Mapping[str, int], net.feature_channels))


def _container(cfg: Any) -> dict[str, Any]:
    """A config node as a plain dict, interpolations resolved."""
    return cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))


def _teacher_config(cfg: DictConfig, teacher: Any) -> dict[str, Any] | None:
    """The teacher's config as saved in checkpoints, with a fingerprint of the weights it loaded."""
    if teacher is None:
        return None
    return {
        **_container(cfg.teacher),
        "weights_sha256": weights_fingerprint(teacher),
    }


def _instantiate_dict(group: DictConfig | None) -> list[Any]:
    return [instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured run, evaluate its best checkpoint, export the student; return what was written."""
    pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    resume, export_name = cfg.get("resume"), _export_name(cfg)
    if rank_zero_only.rank == 0:  # ranks started by a launcher see the dir that rank 0 has already checked
        prepare_run_dir(output_dir, resume, bool(cfg.get("overwrite", False)), export_name)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    check_meta_split(module.meta_enabled, datamodule.has_split("meta"), _choice("distill"), _choice("data"))
    settings = RunSettings({"lq_patch": int(cfg.lq_patch), "data.batch_size": int(cfg.data.batch_size)})
    if resume:
        check_resume(resume, module, settings.settings)
    summary = RunSummary(run_config(cfg, module.meta_enabled))  # config at train start, results at the end
    callbacks = [*_instantiate_dict(cfg.get("callbacks")), summary, settings, ProjectedTime()]
    loggers = build_loggers(cfg)
    callbacks = display_callbacks(callbacks, cfg.trainer)
    quiet_known_noise(module.teacher, _checkpoint_dirs(callbacks) if resume else ())
    if rank_zero_only.rank == 0:
        for directory in {output_dir, *_checkpoint_dirs(callbacks)}:
            check_writable(directory)
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=_log_every(cfg.trainer),
    )
    problem = precision_problem(str(trainer.precision), module.meta_enabled)
    if problem is not None:  # before fit: one line, and no rank is started
        raise RunRefused(problem)
    if not isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher):
        for lg in trainer.loggers:
            _ = lg.version  # resolve it now: the evaluation after fit must not start a new logger version
    # Under a spawn launcher each spawn (fit, then the evaluation) logs from fresh processes whose CSV writer
    # would rewrite a shared version's metrics.csv with its own rows only: left unresolved, the evaluation
    # picks the next version and the training log stays whole.
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    result: dict[str, Any] = {
        "output_dir": str(output_dir),
        "iterations": trainer.global_step,
        "train_metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
    }
    ckpt = _final_checkpoint(trainer)
    result["checkpoint"] = ckpt
    if cfg.evaluation.after_fit and datamodule.dataset("val") is not None:
        metrics = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)[0]
        result["val"] = {k.removeprefix("val/"): float(v) for k, v in metrics.items()}
        _check_against_bicubic(result, datamodule.dataset("val"), module)
    if trainer.is_global_zero:
        if ckpt:
            result.update(_export(ckpt, output_dir / export_name))
            result["benchmarks"] = _evaluate_benchmarks(cfg, result["export"])
        text = json.dumps(finite_or_none(result), indent=2, allow_nan=False)
        (output_dir / "eval.json").write_text(text)
        summary.log_results(trainer.loggers, result, trainer.global_step)
        log.info("run result: %s", text)
        print(run_outputs(result, trainer.loggers), flush=True)
    _finish_wandb()
    return result


def _check_against_bicubic(result: dict[str, Any], dataset: Any, module: SRModule) -> None:
    """Add the val set's size and bicubic PSNR_y to ``result["val"]``; warn when the run scores below it."""
    bicubic, n_images = bicubic_psnr(dataset, module.scale, module.crop_border)
    result["val"] |= {"n_images": n_images, "bicubic_psnr_y": bicubic}
    warning = below_bicubic(result["val"].get("psnr_y"), bicubic)
    if warning is not None:
        result["warnings"] = [warning]
        log.warning(warning)


def _log_every(trainer_cfg: DictConfig) -> int:
    """``log_every_n_steps``, lowered to ``max_steps`` for a run shorter than it (a smoke run logs once)."""
    every, steps = int(trainer_cfg.get("log_every_n_steps") or 50), trainer_cfg.get("max_steps") or -1
    return min(every, int(steps)) if int(steps) > 0 else every


def _export_name(cfg: DictConfig) -> str:
    """The file name the trained network is exported to (``student.pt``; ``teacher.pt`` for teachers)."""
    name = str(cfg.get("export_name") or "student.pt")
    if Path(name).name != name or not name.endswith(".pt"):
        raise RunRefused(f"export_name={name!r}: expected a file name ending in .pt, e.g. teacher.pt")
    return name


def _export(ckpt: str, path: Path) -> dict[str, str]:
    """Export the network of ``ckpt`` to ``path``: under ``export``, and ``student`` for a ``student.pt``."""
    exported = str(export_student(ckpt, path))
    return {"export": exported, "student": exported} if path.name == "student.pt" else {"export": exported}


def _choice(group: str) -> str:
    """The option chosen for config group ``group`` (e.g. ``mkd`` for distill), as the user names it."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return group
    return str(HydraConfig.get().runtime.choices.get(group, group))


def _checkpoint_dirs(callbacks: list[Any]) -> list[Path]:
    dirs = [getattr(cb, "dirpath", None) for cb in callbacks]
    dirs += [cb.path.parent for cb in callbacks if isinstance(getattr(cb, "path", None), Path)]
    return [Path(d) for d in dirs if d]


def _finish_wandb() -> None:
    """Close the wandb run of this fit.

    The next ``train`` in this process (a sweep point of Hydra's local launcher, a notebook cell) would
    otherwise log into it: Lightning's WandbLogger reuses an open run.
    """
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def _final_checkpoint(trainer: pl.Trainer) -> str | None:
    cb = trainer.checkpoint_callback
    if cb is None:
        return None
    return getattr(cb, "best_model_path", "") or getattr(cb, "last_model_path", "") or None


def _evaluate_benchmarks(cfg: DictConfig, student_path: str) -> dict[str, Any] | None:
    """The SR protocol on ``evaluation.hr_dirs`` (e.g. Set5 ... Manga109) for the exported student."""
    hr_dirs = cfg.evaluation.get("hr_dirs") or []
    if not hr_dirs:
        return None
    # eval.yaml's defaults (the meta-kd-sr-eval command), with this run's settings
    eval_cfg = cast(DictConfig, OmegaConf.load(Path(config_dir()) / "eval.yaml"))
    for key in ("defaults", "hydra"):
        eval_cfg.pop(key, None)
    overrides = {"ckpt_path": student_path, "scale": cfg.scale, "hr_dirs": list(hr_dirs), "model": None}
    overrides |= {"self_ensemble": cfg.evaluation.self_ensemble, "tile": cfg.val.tile}
    return evaluate(cast(DictConfig, OmegaConf.merge(eval_cfg, overrides)))


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Console entry point (``meta-kd-sr-train``); returns the validation PSNR_y, what a sweeper optimises."""
    with one_line_errors("meta-kd-sr-train"):  # a setting, file or disk to fix: one line, exit status 2
        _refuse_ddp_multirun(cfg)
        log.info("resolved config:\n%s", resolved_yaml(cfg))
        try:
            result = train(cfg)
        except NonFiniteError as err:  # the last good checkpoint is on disk; nothing non-finite was written
            print(f"meta-kd-sr-train: training stopped: {err}", file=sys.stderr)
            raise SystemExit(1) from None
    return validation_psnr(result)


def resolved_yaml(cfg: DictConfig) -> str:
    """The run's config as YAML, interpolations resolved (as written unresolvable), without ``hydra``."""
    shown = OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"])
    try:
        return OmegaConf.to_yaml(shown, resolve=True)
    except Exception:  # an interpolation that only fails later is reported where it is used
        return OmegaConf.to_yaml(shown)


def _refuse_ddp_multirun(cfg: DictConfig) -> None:
    """``-m`` with ``trainer=ddp`` lets every rank re-run the whole sweep; ddp_spawn is the local tool."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    text = str(cfg.trainer.get("strategy"))
    is_ddp = "DDPStrategy" in text or text.startswith("ddp")
    launched = any(k in os.environ for k in ("LOCAL_RANK", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID"))
    if HydraConfig.get().mode == RunMode.MULTIRUN and is_ddp and "spawn" not in text and not launched:
        raise ValueError(
            "a local sweep (-m) with trainer=ddp re-runs the whole sweep in every rank: "
            "use trainer=ddp_spawn, or one launcher job per point (hydra/launcher=slurm)"
        )


if __name__ == "__main__":
    main()
