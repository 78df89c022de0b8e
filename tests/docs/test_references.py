"""Code and config comments refer the reader to pages in the repository, never to a file it does not hold."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = re.compile(r"\bdocs/[\w/.-]+\.md\b")


def sources() -> list[Path]:
    return sorted([*(ROOT / "src").rglob("*.py"), *(ROOT / "conf").rglob("*.yaml")])


def test_every_page_a_source_names_exists():
    named = {(path, page) for path in sources() for page in PAGE.findall(path.read_text())}
    assert len(named) >= 10
    missing = [f"{path.relative_to(ROOT)}: {page}" for path, page in named if not (ROOT / page).is_file()]
    assert not missing


def test_no_source_cites_a_document_outside_the_repository():
    cites = re.compile(r"SPEC §|the SPEC's|\bREADME\b")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sources()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if cites.search(line)
    ]
    assert not found
