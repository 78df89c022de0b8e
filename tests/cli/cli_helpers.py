"""Compose the real Hydra config for tests, shrunk to tiny sizes (shared by the tests in this folder)."""

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


def compose_train(output_dir: Path, overrides: list[str]) -> DictConfig:
    """The real train config with ``overrides``, writing to ``output_dir``."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=[*FAST, f"paths.output_dir={output_dir}", *overrides])
