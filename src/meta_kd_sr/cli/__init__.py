"""Hydra entry points: the only code of the library that imports hydra."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from omegaconf import OmegaConf

from meta_kd_sr.cli.names import short_run_name

# `${mul:${lq_patch},${scale}}`: HR patch sizes follow the scale (48 LR pixels at x2/x3/x4, as EDSR trains).
OmegaConf.register_new_resolver("mul", lambda *xs: __import__("math").prod(xs), replace=True)
# `${short_name:${hydra.job.override_dirname}}`: sweep run dir names, floats rounded, at most 96 characters
OmegaConf.register_new_resolver("short_name", short_run_name, replace=True)
# `${shipped_teacher:}`: the path of the tiny teacher shipped with the package (experiment=tiny_kd's default).
OmegaConf.register_new_resolver(
    "shipped_teacher", lambda: str(__import__("meta_kd_sr.assets").assets.shipped_teacher()), replace=True
)


def config_dir() -> str:
    """Absolute path of the Hydra config tree (``conf/``).

    ``META_KD_SR_CONF`` wins; then the checkout's ``conf/`` when the package runs from a checkout's
    ``src/`` (editable installs); then the copy packaged in the wheel as ``meta_kd_sr/conf``.
    """
    env = os.environ.get("META_KD_SR_CONF")
    if env:
        return str(Path(env).resolve())
    package = Path(__file__).resolve().parents[1]
    checkout = package.parents[1] / "conf"
    if package.parent.name == "src" and (checkout / "train.yaml").is_file():
        return str(checkout)
    packaged = resources.files("meta_kd_sr") / "conf"
    return str(Path(str(packaged)).resolve())


def hydra_log() -> Path | None:
    """The log of the running Hydra command in its run dir (``None`` when called from Python)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return Path(hydra_cfg.runtime.output_dir) / f"{hydra_cfg.job.name}.log"
