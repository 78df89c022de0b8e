"""The results pages are the committed results, verbatim (a re-run that changes a file changes its page), and
the README's tables are rows of the committed converged and lever reports."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

RESULTS = ROOT / "benchmarks" / "results"
GPU_RUN = RESULTS / "gpu" / "2026-12-04_nvidia-h200_cf5628b"


def table_after(text: str, heading: str) -> str:
    """The first markdown table (its ``|`` lines) after ``heading`` in ``text``."""
    rows = []
    for line in text.split(heading, 1)[1].splitlines():
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    return "\n".join(rows)


def test_gpu_pages_hold_the_committed_gpu_check(docs_pages):
    page = docs_pages.results_pages()[f"gpu/{GPU_RUN.name}.md"]
    report = (GPU_RUN / "gpu_check.md").read_text()
    for heading in ("## Step cost per method", "## Speed levers (each alone)"):
        table = table_after(report, heading)
        assert table.count("\n") > 5 and table in page, heading
    assert json.loads((GPU_RUN / "gpu_check.json").read_text())["environment"]["gpu"] == "NVIDIA H200"
    index = docs_pages.results_pages()["gpu/index.md"]
    assert all(f"]({run.parent.name}.md)" in index for run in RESULTS.glob("gpu/*/gpu_check.md"))


def test_cpu_step_page_holds_every_committed_run(docs_pages):
    page = docs_pages.results_pages()["cpu_step.md"]
    runs = sorted(RESULTS.glob("step_paper_cpu*.json"))
    assert len(runs) >= 2
    for path in runs:
        result = json.loads(path.read_text())
        assert result["table"] in page and result["table"].count("\n") > 3, path.name
        assert not result.get("stage_table") or result["stage_table"] in page
    assert not json.loads((RESULTS / "step_paper_cpu_levers.json").read_text())["errors"]


def test_every_markdown_report_is_a_page_verbatim(docs_pages, tmp_path):
    pages = docs_pages.results_pages()
    for report in RESULTS.glob("*.md"):
        assert report.read_text() in pages[f"{report.stem}.md"], report.name
    # a report that appears later (converged.md, levers.md, ...) becomes a page with its chart, unlisted
    (tmp_path / "gpu").mkdir()
    (tmp_path / "levers.md").write_text("# Levers\n\n| a |\n| --- |\n| 1 |\n")
    (tmp_path / "levers_front.png").write_bytes(b"png")
    found = docs_pages.results_pages(tmp_path)
    assert found["levers.md"].startswith("# Levers\n\n| a |") and "(levers_front.png)" in found["levers.md"]
    assert "(levers.md)" in found["index.md"]


def test_readme_tables_are_rows_of_the_committed_reports():
    """The headline table is the converged report's; "Is it worth it?" quotes the lever study's rows."""
    readme = (ROOT / "README.md").read_text()
    converged = (RESULTS / "converged.md").read_text()
    headline = table_after(readme, "## Headline result").splitlines()
    assert (
        len(headline) >= 4
        and headline[0] == table_after(converged, "## Methods at the budget").splitlines()[0]
    )
    for row in headline:
        assert row in converged.splitlines(), row
    section = readme.split("## Is it worth it?", 1)[1].split("\n## ", 1)[0]
    levers = (RESULTS / "levers.md").read_text()
    for heading in ("## Quality", "## Whole-run meta signal"):
        quoted = table_after(section, heading.replace("## ", "### ")).splitlines()
        assert len(quoted) >= 4 and quoted[0] == table_after(levers, heading).splitlines()[0], heading
        for row in quoted:
            assert row in levers.splitlines(), row
    assert "benchmarks/results/levers.md" in section and "benchmarks/results/converged.md" in readme
