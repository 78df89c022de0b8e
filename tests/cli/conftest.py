"""Compose the real Hydra config, shrink it, and train tiny runs on the embedded photos."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import compose_train

from meta_kd_sr.cli.train import train


@pytest.fixture(scope="session")
def tiny_teacher_ckpt(tmp_path_factory) -> Path:
    """A tiny teacher trained for a few iterations (its quality does not matter to these tests)."""
    out = tmp_path_factory.mktemp("teacher")
    result = train(compose_train(out, ["experiment=tiny_teacher", "model.n_feats=16", "model.n_blocks=2"]))
    return Path(result["checkpoint"])
