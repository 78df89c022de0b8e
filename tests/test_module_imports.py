"""No import circle in src/: every module imports, and the graph of the imports written in the files (read
with ``ast``, including those under ``TYPE_CHECKING`` and inside functions) has no cycle."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_files() -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is a package __init__)}`` of every module under src/."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def imported(name: str, path: Path, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``path`` imports (``from pkg import sub`` names the submodule)."""
    package = name if is_package else name.rpartition(".")[0]
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in known:
                    deps.add(full)
                elif base in known:
                    deps.add(base)
    return deps - {name}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imported(name, path, pkg, set(files)) for name, (path, pkg) in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_relative_and_type_checking_imports_count(tmp_path) -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import X\nfrom . import c\n"
    (tmp_path / "a.py").write_text(source)
    assert imported("p.a", tmp_path / "a.py", False, {"p.a", "p.b", "p.c"}) == {"p.b", "p.c"}


def test_src_has_no_import_cycle() -> None:
    graph = import_graph()
    assert (
        "meta_kd_sr.training.module" in graph
        and "meta_kd_sr.meta.iteration" in graph["meta_kd_sr.training.module"]
    )
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(module_files()))
def test_every_module_imports(name) -> None:
    importlib.import_module(name)


# The subpackages from the bottom up (see meta_kd_sr/__init__.py): each imports only those before it.
LAYERS = ["assets", "runtime", "models", "data", "distill", "meta", "evaluation", "training", "cli"]


def test_subpackages_import_only_the_layers_below() -> None:
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for module, deps in import_graph().items():
        parts = module.split(".")
        if len(parts) < 2 or parts[1] not in rank:
            continue
        for dep in deps:
            below = dep.split(".")[1] if dep.count(".") else None
            if below in rank and rank[below] > rank[parts[1]]:
                upward.append(f"{module} -> {dep}")
    assert not upward, "imports against the layers: " + ", ".join(sorted(upward))
    assert {p.name for p in (SRC / "meta_kd_sr").iterdir() if p.suffix == ".py"} == {"__init__.py"}
