"""Pages the docs build generates (run by mkdocs-gen-files): the API reference and the results.

The API reference walks the ``src/meta_kd_sr`` package, so a module moved or added shows up without editing a
list. The results pages read ``benchmarks/results`` as committed: every ``*.md`` report there becomes a page,
the CPU step costs come from ``step_paper_cpu*.json`` and the GPU checks from ``gpu/``; nothing is copied into
``docs/``, so the site cannot hold a stale copy. The functions return page texts, so tests read the same pages
the site shows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "meta_kd_sr"
RESULTS = ROOT / "benchmarks" / "results"


def api_modules(package: Path = PACKAGE) -> list[tuple[str, ...]]:
    """Dotted module paths of every public module and subpackage under ``package``, sorted, as name tuples."""
    modules = set()
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__main__" or any(p.startswith("_") and p != "__init__" for p in parts):
            continue
        modules.add(parts[:-1] if parts[-1] == "__init__" else parts)
    return sorted(modules)


def api_pages(package: Path = PACKAGE) -> dict[str, str]:
    """``reference/api/...`` page path -> its mkdocstrings directive, one page per module."""
    pages = {}
    for parts in api_modules(package):
        if (package.parent.joinpath(*parts) / "__init__.py").is_file():
            doc = Path(*parts, "index.md")
        else:
            doc = Path(*parts[:-1], f"{parts[-1]}.md")
        pages[doc.as_posix()] = f"::: {'.'.join(parts)}\n"
    return pages


def _shift_headings(text: str, levels: int) -> str:
    """Markdown headings one or more levels deeper (``#`` -> ``##``), outside code fences."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        out.append("#" * levels + line if not fenced and re.match(r"#+ ", line) else line)
    return "\n".join(out) + "\n"


def _title(stem: str) -> str:
    return stem.replace("_", " ").capitalize()


def report_pages(results: Path = RESULTS) -> dict[str, str]:
    """Every ``*.md`` report in ``results`` as a page, with the charts named ``<report>_*.png`` below it."""
    pages = {}
    for report in sorted(results.glob("*.md")):
        text = report.read_text()
        if not text.lstrip().startswith("# "):
            text = f"# {_title(report.stem)}\n\n{text}"
        for chart in sorted(results.glob(f"{report.stem}_*.png")):
            text += f"\n![{chart.stem.replace('_', ' ')}]({chart.name})\n"
        source = f"\n---\n\nGenerated from `benchmarks/results/{report.name}`.\n"
        pages[f"{report.stem}.md"] = text + source
    return pages


def cpu_step_page(results: Path = RESULTS) -> str | None:
    """The step costs at the paper's shapes on CPU, from every ``step_paper_cpu*.json`` (their tables)."""
    runs = sorted(results.glob("step_paper_cpu*.json"))
    if not runs:
        return None
    parts = ["# Step cost on CPU at the paper's shapes\n"]
    for path in runs:
        run = json.loads(path.read_text())
        parts.append(f"## `{path.name}`\n\n{run['header']}\n\n{run['table']}\n")
        if run.get("stage_table"):
            parts.append(f"Where the time goes (profiled, share of an iteration):\n\n{run['stage_table']}\n")
        if run.get("errors"):
            parts.append("Errors: " + "; ".join(map(str, run["errors"])) + "\n")
    parts.append("---\n\nGenerated from `benchmarks/results/step_paper_cpu*.json`.\n")
    return "\n".join(parts)


def gpu_pages(results: Path = RESULTS) -> dict[str, str]:
    """The GPU checks: the index of runs (``gpu/README.md``) and each run's ``gpu_check.md``."""
    gpu = results / "gpu"
    pages = {}
    runs = sorted(p.parent for p in gpu.glob("*/gpu_check.md"))
    index = (gpu / "README.md").read_text() if (gpu / "README.md").is_file() else "# GPU check results\n"
    links = "\n".join(f"- [{run.name}]({run.name}.md)" for run in runs)
    pages["gpu/index.md"] = f"{index}\n## Runs\n\n{links}\n"
    for run in runs:
        text = _shift_headings((run / "gpu_check.md").read_text(), 1)
        source = f"\n---\n\nGenerated from `benchmarks/results/gpu/{run.name}/gpu_check.md`.\n"
        pages[f"gpu/{run.name}.md"] = f"# GPU check {run.name}\n\n{text}{source}"
    return pages


def results_pages(results: Path = RESULTS) -> dict[str, str]:
    """Every results page: ``results/<path>`` -> its text."""
    pages = report_pages(results)
    cpu = cpu_step_page(results)
    if cpu is not None:
        pages["cpu_step.md"] = cpu
    pages |= gpu_pages(results)
    listing = "\n".join(f"- [{_page_title(text)}]({path})" for path, text in sorted(pages.items()))
    pages["index.md"] = (
        "# Results\n\nEvery page in this section is built from the files in `benchmarks/results/` as "
        "committed; each says which file it reads, and the report itself names the command, date, machine "
        f"and commit that produced it.\n\n{listing}\n"
    )
    return pages


def _page_title(text: str) -> str:
    return next(line[2:].strip() for line in text.splitlines() if line.startswith("# "))


def _write_section(name: str, pages: dict[str, str], nav_order: list[tuple[tuple[str, ...], str]]) -> None:
    """Write ``pages`` under ``name/`` and their nav (``SUMMARY.md``, read by mkdocs-literate-nav)."""
    import mkdocs_gen_files

    nav = mkdocs_gen_files.Nav()
    for labels, path in nav_order:
        nav[labels] = path
        with mkdocs_gen_files.open(f"{name}/{path}", "w") as page:
            page.write(pages[path])
    with mkdocs_gen_files.open(f"{name}/SUMMARY.md", "w") as summary:
        summary.writelines(nav.build_literate_nav())


def results_nav(pages: dict[str, str]) -> list[tuple[tuple[str, ...], str]]:
    """The results section's nav: the overview, each report by its title, then the GPU checks by run."""
    order = [(("Overview",), "index.md")]
    order += [((_page_title(pages[p]),), p) for p in sorted(pages) if "/" not in p and p != "index.md"]
    gpu = sorted(p for p in pages if p.startswith("gpu/") and p != "gpu/index.md")
    order += [(("GPU checks",), "gpu/index.md")] + [(("GPU checks", Path(p).stem), p) for p in gpu]
    return order


def main() -> None:
    """Write the generated pages into the build (never into ``docs/``)."""
    import mkdocs_gen_files

    api = api_pages()
    _write_section(
        "reference/api",
        api,
        [
            (
                tuple(Path(p).parent.parts)
                if p.endswith("index.md")
                else tuple(Path(p).with_suffix("").parts),
                p,
            )
            for p in sorted(api)
        ],
    )
    pages = results_pages()
    _write_section("results", pages, results_nav(pages))
    for chart in sorted(RESULTS.glob("*.png")):
        with mkdocs_gen_files.open(f"results/{chart.name}", "wb") as out:
            out.write(chart.read_bytes())


if __name__ in {"__main__", "<run_path>"}:
    main()
