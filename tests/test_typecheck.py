"""pyright (basic mode, ``[tool.pyright]`` in pyproject.toml) finds no error in src/.

The dev extra installs ``pyright[nodejs]``, whose Node.js wheel lets it run offline; where pyright is not
installed the test is skipped.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("pyright") is None, reason="pyright is not installed")
def test_pyright_finds_no_error_in_src() -> None:
    cmd = [sys.executable, "-m", "pyright", "--pythonpath", sys.executable]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 errors" in done.stdout
