"""The networks the repository ships still load after a module moves: the tiny teacher asset and every
committed benchmark student rebuild through the allow-list (``_target_`` names are data, never imported)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from meta_kd_sr.assets import shipped_teacher
from meta_kd_sr.models.checkpoint import student_from_checkpoint

RUNS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "runs"
STUDENTS = sorted(RUNS.glob("*/student.pt"))


def _upscales(net: torch.nn.Module, scale: int = 4) -> None:
    sr = net(torch.rand(1, 3, 6, 6))
    assert sr.shape == (1, 3, 6 * scale, 6 * scale) and torch.isfinite(sr).all()


def test_the_shipped_teacher_loads() -> None:
    net, config = student_from_checkpoint(shipped_teacher())
    assert config["_target_"].startswith("meta_kd_sr.models.")
    _upscales(net)


def test_there_are_committed_students() -> None:
    assert len(STUDENTS) >= 10, f"expected the committed benchmark students under {RUNS}"


@pytest.mark.parametrize("path", STUDENTS, ids=lambda p: p.parent.name)
def test_a_committed_benchmark_student_loads(path: Path) -> None:
    net, config = student_from_checkpoint(path)
    assert config["_target_"].startswith("meta_kd_sr.models.")
    _upscales(net)
