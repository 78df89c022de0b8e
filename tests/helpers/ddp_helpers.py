"""Helpers of the DDP tests: tiny-run overrides, subprocess runners, rank dumps.

DDP never runs inside the pytest process (Lightning's launcher would re-run pytest itself): every run is a
``subprocess.run`` of ``run_plan.py`` (one process, or two under torchrun) or of the console script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1] / "ddp"  # run_plan.py and dump.py
VENV_BIN = Path(sys.executable).parent
TEACHER = {"n_feats": 16, "n_blocks": 2}
# A guard against a hung command only (a rank waiting for a dead peer); the runs take seconds.
HANG_GUARD_S = 1800


def tiny_overrides(assets: Path) -> list[str]:
    """Hydra overrides of a tiny meta-KD run on the crops of ``ddp_assets`` (CPU, float32)."""
    data = []
    for split in ("train", "meta", "val"):
        data += [
            f"data.{split}._target_=meta_kd_sr.data.ImageFolderSR",
            f"~data.{split}.names",
            f"+data.{split}.hr_dir={assets / split}",
        ]
    return [
        "experiment=tiny_mkd",
        f"teacher.ckpt_path={assets / 'teacher.pt'}",
        *(f"teacher.net.{k}={v}" for k, v in TEACHER.items()),
        "model.n_feats=8",
        "model.n_blocks=2",
        "lq_patch=8",
        *data,
        "data.train.samples_per_epoch=64",
        "data.meta.samples_per_epoch=64",
        "data.batch_size=4",
        "optim.optimizer.lr=2e-3",
        "meta.lr=2e-3",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]


def subprocess_env() -> dict[str, str]:
    """One intra-op thread per process (two ranks share the cores) and no wandb."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(HERE)}


def run_checked(
    cmd: list[str], cwd: Path, timeout: float | None = HANG_GUARD_S, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``cmd`` (extra ``env`` on top of ``subprocess_env()``); on failure show the tail of its output."""
    env = {**subprocess_env(), **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def run_plan(plan: dict, workdir: Path, nproc: int) -> subprocess.CompletedProcess:
    """Run ``run_plan.py`` on ``plan`` in one process, or in ``nproc`` processes started by torchrun."""
    path = workdir / f"plan{nproc}.json"
    path.write_text(json.dumps(plan))
    script = str(HERE / "run_plan.py")
    if nproc == 1:
        cmd = [sys.executable, script, str(path)]
    else:
        cmd = [str(VENV_BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", script, str(path)]
    return run_checked(cmd, cwd=workdir, timeout=None)  # many trainings: no time limit


def load_ranks(folder: Path) -> list[dict]:
    """The ``rank<r>.pt`` dumps of one run, by rank."""
    files = sorted(folder.glob("rank*.pt"))
    assert files, f"no rank dumps in {folder}"
    return [torch.load(f, weights_only=False) for f in files]
