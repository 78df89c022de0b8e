"""Compose the real Hydra train config for tests, shrunk to tiny sizes; train a tiny teacher."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from meta_kd_sr.cli import config_dir

FAST = [
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.val_check_interval=4",
    "trainer.max_steps=4",
    "logger=none",
    "lq_patch=8",
    "data.batch_size=4",
    "data.train.samples_per_epoch=64",
]


def compose_train(output_dir: Path, overrides: list[str], accelerator: str = "cpu") -> DictConfig:
    """The real train config with ``overrides`` on ``accelerator``, writing to ``output_dir``."""
    fast = [
        o if not o.startswith("trainer.accelerator=") else f"trainer.accelerator={accelerator}" for o in FAST
    ]
    fixed = [*fast, f"paths.output_dir={output_dir}"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=[*fixed, *overrides])


def train_tiny_teacher(output_dir: Path) -> Path:
    """A tiny teacher (EDSR 16 x 2) trained a few iterations on CPU: its checkpoint path."""
    from meta_kd_sr.cli.train import train

    overrides = ["experiment=tiny_teacher", "model.n_feats=16", "model.n_blocks=2"]
    return Path(train(compose_train(output_dir, overrides))["checkpoint"])
