"""The README's result tables are the committed results, verbatim (a re-run that changes them fails here)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GPU_RUN = ROOT / "benchmarks" / "results" / "gpu" / "2026-12-04_nvidia-h200_cf5628b"
CPU_PAPER = ROOT / "benchmarks" / "results" / "step_paper_cpu.json"
CPU_LEVERS = ROOT / "benchmarks" / "results" / "step_paper_cpu_levers.json"


def table_after(text: str, heading: str) -> str:
    """The first markdown table (its ``|`` lines) after ``heading`` in ``text``."""
    rows = []
    for line in text.split(heading, 1)[1].splitlines():
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    return "\n".join(rows)


def test_readme_gpu_tables_are_the_committed_gpu_check():
    readme, report = (ROOT / "README.md").read_text(), (GPU_RUN / "gpu_check.md").read_text()
    for heading in ("## Step cost per method", "## Speed levers (each alone)"):
        table = table_after(report, heading)
        assert table.count("\n") > 5 and table in readme, heading
    assert json.loads((GPU_RUN / "gpu_check.json").read_text())["environment"]["gpu"] == "NVIDIA H200"


def test_readme_cpu_paper_table_is_the_committed_run():
    result = json.loads(CPU_PAPER.read_text())
    assert result["table"] in (ROOT / "README.md").read_text()
    assert result["stage_table"] in (ROOT / "README.md").read_text()
    levers = json.loads(CPU_LEVERS.read_text())
    assert levers["table"] in (ROOT / "README.md").read_text() and not levers["errors"]
