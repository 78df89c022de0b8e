"""The loggers of a training run: built from the ``logger`` config group, named after the run.

``logger`` holds one or more named logger configs (``logger=wandb``, ``logger=[csv,wandb]``): each becomes one
Lightning logger. A logger whose package is an optional extra (wandb, tensorboard) is refused with the pip
command that installs it, before anything is built. W&B runs get a name, a group and tags from the experiment,
the distillation method, the seed and the command-line overrides (``conf/logger/wandb.yaml`` sets them
explicitly). ``run_config`` is the whole resolved config as the dashboards show it.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from meta_kd_sr.training.recovery import RunRefused

# Logger class name -> (modules that provide its backend, the extra that installs one).
OPTIONAL_BACKENDS = {
    "WandbLogger": (("wandb",), "wandb"),
    "TensorBoardLogger": (("tensorboard", "tensorboardX"), "tensorboard"),
}
# Overrides that are paths or run controls, not settings: left out of tags (train.yaml's override_dirname
# exclude_keys are added when Hydra runs).
UNTAGGED = ("paths.output_dir", "resume", "overwrite", "teacher.ckpt_path", "evaluation.hr_dirs")
WANDB_TAG_MAX = 64  # wandb refuses longer tags


@dataclass(frozen=True)
class RunIdentity:
    """What names a run on a dashboard.

    Attributes:
        experiment: the ``experiment`` preset (``run`` without one).
        method: the ``distill`` preset (``none``, ``fakd``, ``mkd``...).
        seed: the run's seed.
        overrides: the command-line overrides (``key=value``), paths and run controls left out.
        sweep: the sweep dir and this run's job number in a multirun (``None`` for a single run).
    """

    experiment: str
    method: str
    seed: int
    overrides: tuple[str, ...] = ()
    sweep: tuple[str, int] | None = None

    @property
    def name(self) -> str:
        """``<experiment>-<method>-s<seed>``, with ``-j<job number>`` in a sweep (its points share seeds)."""
        base = f"{self.experiment}-{self.method}-s{self.seed}"
        return base if self.sweep is None else f"{base}-j{self.sweep[1]}"

    @property
    def group(self) -> str:
        """The experiment; in a sweep, the experiment and the sweep dir's last two parts (date/time)."""
        if self.sweep is None:
            return self.experiment
        return f"{self.experiment}:{'/'.join(Path(self.sweep[0]).parts[-2:])}"

    @property
    def tags(self) -> list[str]:
        """Experiment, method, then each override; at most 64 characters each, no duplicates."""
        tags = [self.experiment, self.method, *self.overrides]
        return list(dict.fromkeys(t[:WANDB_TAG_MAX] for t in tags))


def _hydra() -> DictConfig | None:
    # HydraConfig.get() is typed as the HydraConf dataclass; at run time it is a DictConfig
    return cast(DictConfig, HydraConfig.get()) if HydraConfig.initialized() else None


def _method_from_config(cfg: DictConfig) -> str:
    """The method when Hydra names none: the KD loss class (``fakd``, ``krnet``...), else output/none."""
    distill = cfg.get("distill") or {}
    loss = distill.get("loss")
    if loss is not None and loss.get("_target_"):
        return str(loss._target_).rsplit(".", 1)[-1].removesuffix("Loss").lower()
    return "output" if distill.get("output_weight") else "none"


def run_identity(cfg: DictConfig, hydra: DictConfig | None = None) -> RunIdentity:
    """The run's experiment, method, seed, overrides and sweep, from Hydra's runtime config when it runs.

    Args:
        cfg: the composed train config.
        hydra: Hydra's own config (``HydraConfig.get()``); default: the running one, if any.
    """
    hydra = _hydra() if hydra is None else hydra
    if hydra is None:
        return RunIdentity("run", _method_from_config(cfg), int(cfg.seed))
    choices = hydra.runtime.choices
    untagged = {*UNTAGGED, *(hydra.job.config.override_dirname.get("exclude_keys") or [])}
    untagged |= {"experiment", "distill", "seed", "hparams_search"}  # already in the name and tags
    overrides = tuple(
        o for o in hydra.overrides.task if o.split("=", 1)[0].lstrip("+~") not in untagged and "=" in o
    )
    sweep = (str(hydra.sweep.dir), int(hydra.job.num)) if hydra.mode == RunMode.MULTIRUN else None
    return RunIdentity(
        experiment=str(choices.get("experiment") or "run"),
        method=str(choices.get("distill") or _method_from_config(cfg)),
        seed=int(cfg.seed),
        overrides=overrides,
        sweep=sweep,
    )


def require_backend(key: str, target: str) -> None:
    """Refuse a logger whose optional package is not installed, naming the pip command that installs it."""
    backend = OPTIONAL_BACKENDS.get(target.rsplit(".", 1)[-1])
    if backend is None:
        return
    modules, extra = backend
    if not any(importlib.util.find_spec(m) is not None for m in modules):
        raise RunRefused(
            f"logger {key!r} needs the {modules[0]} package, which is not installed: "
            f"pip install {modules[0]} (in a checkout: pip install '.[{extra}]'), or choose another logger, "
            "e.g. logger=csv"
        )


def build_loggers(cfg: DictConfig, identity: RunIdentity | None = None) -> list[Logger]:
    """One Lightning logger per entry of ``cfg.logger`` (``None`` entries and ``logger=none`` give none).

    W&B loggers get ``name``, ``group`` and ``tags`` from ``identity`` where their config leaves them
    ``null``.

    Raises:
        RunRefused: a logger's optional package (wandb, tensorboard) is not installed.
    """
    group = cfg.get("logger") or {}
    nodes = {k: v for k, v in group.items() if v is not None and "_target_" in v}
    for key, node in nodes.items():  # every check before the first logger is built
        require_backend(key, str(node._target_))
    identity = run_identity(cfg) if identity is None else identity
    loggers = []
    for node in nodes.values():
        is_wandb = str(node._target_).endswith("WandbLogger")
        loggers.append(instantiate(node, **(_wandb_naming(node, identity) if is_wandb else {})))
        if is_wandb:
            # Lightning passes anonymous=None to wandb.init, and wandb warns whenever the key is present.
            getattr(loggers[-1], "_wandb_init", {}).pop("anonymous", None)
        if is_wandb and loggers[-1].save_dir:
            # Processes of a spawn launcher attach to this run and write its media files under WANDB_DIR
            # (./wandb when unset): point it at the run's own dir.
            os.environ["WANDB_DIR"] = str(loggers[-1].save_dir)
    return loggers


def _wandb_naming(node: DictConfig, identity: RunIdentity) -> dict[str, Any]:
    """``name``, ``group``, ``tags`` for wandb.init: the config's where set, else the run's identity."""
    tags = node.get("tags")
    return {
        "name": node.get("name") or identity.name,
        "group": node.get("group") or identity.group,
        "tags": list(tags) if tags is not None else identity.tags,
    }


def run_config(cfg: DictConfig, meta_enabled: bool, identity: RunIdentity | None = None) -> dict[str, Any]:
    """The whole train config, resolved, as plain values, with what the dashboards group runs by.

    ``meta.enabled`` says what runs: meta learning is on only when the distiller has meta parameters
    (a FAKD run has none, whatever ``conf/meta`` says). ``run`` holds the experiment, the method, the
    name, group and tags, and the overrides. A value that cannot be resolved here (an interpolation of
    Hydra's runtime outside Hydra) is kept as written.

    Args:
        cfg: the composed train config.
        meta_enabled: whether this run meta-learns the KRNets (``SRModule.meta_enabled``).
        identity: the run's identity (default: ``run_identity(cfg)``).
    """
    identity = run_identity(cfg) if identity is None else identity
    out = {str(key): _resolved(cfg, str(key)) for key in cfg if key != "hydra"}
    if isinstance(out.get("meta"), dict):
        out["meta"]["enabled"] = bool(meta_enabled)
    out["run"] = {
        "experiment": identity.experiment,
        "method": identity.method,
        "name": identity.name,
        "group": identity.group,
        "tags": identity.tags,
        "overrides": list(identity.overrides),
        "sweep_dir": identity.sweep[0] if identity.sweep else None,
    }
    return out


def _resolved(cfg: DictConfig, key: str) -> Any:
    try:
        value = cfg[key]
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    except Exception:  # e.g. ${hydra:...} without Hydra running, a ??? left open: keep the text
        return cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=False))[key]
