"""Training runs in a subprocess and checkpoint comparison, shared by the recovery and meta-lever tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from helpers.train_config import FAST

CLI_TESTS = Path(__file__).resolve().parents[1] / "cli"  # recovery_helpers.py, loaded by the subprocesses


def cli_train(output_dir: Path, overrides: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """``meta-kd-sr-train`` in a subprocess with the fast settings; no timeout (a busy machine is slow).

    One intra-op thread, as in this process (conftest): runs in both compute bit-identical floats.
    """
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "PYTHONPATH": str(CLI_TESTS),
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    args = [sys.executable, "-m", "meta_kd_sr.cli.train", *FAST, f"hydra.run.dir={output_dir}", *overrides]
    return subprocess.run(args, capture_output=True, text=True, env=env)


def equal_state(a, b, where: str = "") -> list[str]:
    """Names of the tensors that differ between two nested checkpoint structures (bit equality)."""
    if isinstance(a, torch.Tensor):
        return [] if isinstance(b, torch.Tensor) and torch.equal(a, b) else [where]
    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            return [where]
        return [w for k in a for w in equal_state(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list | tuple):
        if len(a) != len(b):
            return [where]
        return [w for i, (x, y) in enumerate(zip(a, b)) for w in equal_state(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]
