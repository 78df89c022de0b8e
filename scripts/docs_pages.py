"""Pages the docs build generates (run by mkdocs-gen-files): the API reference and the results.

The API reference walks the ``src/meta_kd_sr`` package, so a module moved or added shows up without editing a
list; the results pages read ``benchmarks/results`` as committed, so the site never holds a copy that can go
stale.
"""

from __future__ import annotations

from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "meta_kd_sr"


def api_modules(package: Path = PACKAGE) -> list[tuple[str, ...]]:
    """Dotted module paths of every module and subpackage under ``package``, sorted, as tuples of names."""
    modules = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__main__" or any(p.startswith("_") and p != "__init__" for p in parts):
            continue
        modules.append(parts[:-1] if parts[-1] == "__init__" else parts)
    return sorted(set(modules))


def write_api() -> None:
    """One page per module, ``reference/api/<dotted path>.md``, and the nav of them (``SUMMARY.md``)."""
    nav = mkdocs_gen_files.Nav()
    for parts in api_modules():
        doc = Path("reference", "api", *parts[:-1], f"{parts[-1]}.md")
        if (PACKAGE.parent.joinpath(*parts) / "__init__.py").is_file():
            doc = Path("reference", "api", *parts, "index.md")
        nav[parts] = doc.relative_to("reference/api").as_posix()
        with mkdocs_gen_files.open(doc, "w") as page:
            page.write(f"::: {'.'.join(parts)}\n")
    with mkdocs_gen_files.open("reference/api/SUMMARY.md", "w") as summary:
        summary.writelines(nav.build_literate_nav())


write_api()
