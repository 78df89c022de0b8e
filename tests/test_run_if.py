"""``RunIf``: GPU tests carry the ``gpu`` marker and are skipped, with the reason, where CUDA is absent."""

from __future__ import annotations

import pytest

from helpers import run_if
from helpers.run_if import RunIf


def _marks(decorator):
    def test_something():  # pytest marks named functions only, not lambdas
        pass

    return {m.name: m for m in getattr(decorator(test_something), "pytestmark", [])}


def test_gpu_condition_marks_and_skips_without_cuda(monkeypatch):
    monkeypatch.setattr(run_if, "cuda_count", lambda: 0)
    marks = _marks(RunIf(min_gpus=1))
    assert "gpu" in marks
    assert marks["skipif"].args == (True,)
    assert marks["skipif"].kwargs["reason"] == "needs 1 CUDA device(s), found 0"


def test_gpu_condition_runs_where_cuda_is_present(monkeypatch):
    monkeypatch.setattr(run_if, "cuda_count", lambda: 2)
    marks = _marks(RunIf(min_gpus=2))
    assert "gpu" in marks and marks["skipif"].args == (False,)


def test_no_condition_adds_no_gpu_marker():
    assert "gpu" not in _marks(RunIf())


def test_unknown_condition_is_an_error():
    with pytest.raises(ValueError, match=r"RunIf: unknown conditions \['min_tpus'\]"):
        RunIf(min_tpus=1)
