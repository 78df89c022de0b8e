"""Make ``benchmarks/`` importable (``bench_quality`` and its ``quality`` package are not installed); the
``--quick`` run every benchmark test module shares."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory) -> Path:
    """``bench_quality.py --quick`` as a user runs it (a subprocess, no timeout); its results folder."""
    out = tmp_path_factory.mktemp("bench_quality")
    subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_quality.py"), "--quick", "--out", str(out)], check=True
    )
    return out


@pytest.fixture
def train_launches(monkeypatch) -> list[list[str]]:
    """The command lines of the trainings the benchmark's runner starts from now on (not git, uname)."""
    from quality import runner

    launches: list[list[str]] = []
    real_popen = runner.subprocess.Popen

    def counting_popen(cmd, *args, **kwargs):
        if "meta_kd_sr.cli.train" in cmd:
            launches.append(list(cmd))
        return real_popen(cmd, *args, **kwargs)

    monkeypatch.setattr(runner.subprocess, "Popen", counting_popen)
    return launches
