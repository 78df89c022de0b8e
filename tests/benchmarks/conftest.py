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
