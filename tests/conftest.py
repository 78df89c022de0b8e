"""Shared fixtures: real photos from scikit-image's wheel, no network, no downloads.

Every test starts from the same process state, whatever ran before it and whatever the shell exported:
wandb off, no launcher variables (a CI job inside SLURM or torchrun must not turn the tiny in-process runs
into ranks), the same seeds, no Hydra config left over from an earlier test.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

LAUNCHER_PREFIXES = ("SLURM_", "TORCHELASTIC_", "PL_")
LAUNCHER_VARS = (
    "LOCAL_RANK",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def _drop_launcher_variables() -> None:
    for name in [n for n in os.environ if n.startswith(LAUNCHER_PREFIXES) or n in LAUNCHER_VARS]:
        del os.environ[name]


_drop_launcher_variables()
# Subprocesses inherit this too; a test that wants wandb sets WANDB_MODE=offline itself.
os.environ["WANDB_MODE"] = "disabled"
# Tiny tensors on 2 busy cores: one intra-op thread avoids OpenMP barrier stalls.
torch.set_num_threads(1)


# Markers by place: ``-m "not ddp"``, ``-m integration`` select by kind without a decorator on every test.
MARKED_PATHS = {
    "ddp": ("ddp/",),
    "gpu": ("gpu/",),
    "integration": ("cli/", "benchmarks/", "test_notebooks.py", "test_wheel_install.py"),
}
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test by the folder or file it lives in (``MARKED_PATHS``)."""
    for item in items:
        where = Path(str(item.path)).resolve().relative_to(TESTS).as_posix()
        for marker, places in MARKED_PATHS.items():
            if where.startswith(places) and item.get_closest_marker(marker) is None:
                item.add_marker(marker)


@pytest.fixture(autouse=True)
def _isolated_process_state():
    """Start every test from the same seeds; undo the environment variables and Hydra state it leaves.

    Libraries set variables for the rest of the process: ``WandbLogger(offline=True)`` sets WANDB_MODE,
    ``seed_everything`` sets PL_GLOBAL_SEED (which every later subprocess would inherit). The seeds make
    a test draw the same numbers alone as in the whole suite, whatever ran before it.
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    _drop_launcher_variables()  # a session fixture's training may have seeded before this test
    environ = dict(os.environ)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
    for name in set(os.environ) - set(environ):
        del os.environ[name]
    os.environ.update(environ)
    _drop_launcher_variables()
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None


def _photo(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)()


@pytest.fixture(scope="session")
def photos_uint8() -> dict[str, np.ndarray]:
    """A few real RGB photos (H, W, 3) uint8 shipped with scikit-image."""
    return {n: _photo(n) for n in ("astronaut", "chelsea", "coffee", "rocket")}


@pytest.fixture(scope="session")
def photo_batch(photos_uint8) -> torch.Tensor:
    """(4, 3, 96, 96) float32 in [0, 1]: centre crops of the real photos."""
    crops = []
    for im in photos_uint8.values():
        h, w = im.shape[:2]
        top, left = (h - 96) // 2, (w - 96) // 2
        crops.append(torch.from_numpy(im[top : top + 96, left : left + 96].copy()).permute(2, 0, 1))
    return torch.stack(crops).float() / 255.0


@pytest.fixture(scope="session")
def tiny_teacher_ckpt(tmp_path_factory):
    """A tiny teacher (EDSR 16 x 2) trained a few iterations on CPU (its quality does not matter here)."""
    from helpers.train_config import train_tiny_teacher

    return train_tiny_teacher(tmp_path_factory.mktemp("teacher"))
