"""``scripts/gpu_check.sh --dry``: the GPU check's whole code path on CPU at tiny sizes, and its refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run_script(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable, **env},
    )


@pytest.fixture(scope="module")
def dry(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu_check")
    return run_script([str(out), "--dry", "--commit", "abc123"]), out


def test_dry_run_writes_every_section(dry):
    run, out = dry
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    env = report["environment"]
    assert env["mode"] == "dry (CPU, tiny sizes)" and env["commit"] == "abc123" and env["device"] == "cpu"
    tests = report["tests"]  # pytest -m gpu ran, and every CUDA test was skipped here
    assert tests["tests"] >= 15 and tests["skipped"] == tests["tests"] and tests["failed_tests"] == []
    rows = {r["name"]: r for r in report["steps"]["results"]}
    for family in ("edsr", "rcan"):
        for method in ("output", "mkd"):
            for precision in ("fp32", "bf16"):
                row = rows[f"{family}/{method}/{precision}"]
                assert row["median_s"] > 0 and len(row["seconds"]) == 1
    assert rows["edsr/mkd/fp32"]["params"]["teacher"] > rows["edsr/mkd/fp32"]["params"]["student"]
    assert report["loader"]["patches_per_s"] > 0 and report["loader"]["mkd_patches_per_s"] > 0
    assert {r["name"] for r in report["levers"]["results"]} == {"edsr/mkd/bf16", "edsr/mkd/bf16+cl"}
    text = (out / "gpu_check.md").read_text()
    for heading in (
        "## CUDA tests",
        "## Step cost per method",
        "## DIV2K training loader",
        "## Speed levers",
    ):
        assert heading in text
    assert "| edsr/mkd/fp32 |" in text and (out / "gpu_tests.xml").is_file()


def test_without_cuda_a_full_run_is_refused_in_one_line(tmp_path):
    run = run_script([str(tmp_path)])
    assert run.returncode == 2
    assert (
        run.stderr.strip() == "gpu-check: CUDA is not available here (use --dry to run the code path on CPU)"
    )


def test_a_missing_dependency_without_its_wheel_is_one_line(tmp_path):
    fake = tmp_path / "python"  # a Python that cannot import `higher`
    fake.write_text(f'#!/bin/sh\n[ "$2" = "import higher" ] && exit 1\nexec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    run = run_script([str(tmp_path / "out"), "--dry"], PYTHON=str(fake), GPU_CHECK_WHEELS=str(wheels))
    assert run.returncode == 2
    assert run.stderr.strip() == (
        f"gpu-check: {fake} cannot import higher and {wheels}/ has no higher wheel (make gpu-wheels)"
    )
    assert not (tmp_path / "out").exists()
