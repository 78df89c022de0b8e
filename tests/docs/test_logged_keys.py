"""The logged-keys page lists exactly the keys the library's code logs (read from the source, statically)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PAGE = ROOT / "docs" / "reference" / "logged-keys.md"
KEY = re.compile(r"^(train|val)/[a-z_0-9]+$")
IMAGES = {"val/panels", "val/kernels"}  # logged as images by the validation panels, listed below the table


def _source_strings() -> tuple[set[str], set[str]]:
    """String constants of the package, and the constant heads of its f-strings (``f"loss_kd_{pos}"``)."""
    constants, heads = set(), set()
    for path in (ROOT / "src" / "meta_kd_sr").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                constants.add(node.value)
            elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
                heads.add(str(node.values[0].value))
    return constants, heads


def _documented() -> list[str]:
    return [m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", PAGE.read_text(), re.M)]


def test_every_logged_key_in_the_code_is_documented():
    constants, _ = _source_strings()
    documented = set(_documented())
    logged = {s for s in constants if KEY.match(s)} - IMAGES
    assert logged and sorted(logged - documented) == []
    assert all(f"`{key}`" in PAGE.read_text() for key in IMAGES)


def test_every_documented_key_is_logged_by_the_code():
    constants, heads = _source_strings()
    assert "train/" in heads  # the module logs every loss term of the distiller as train/<term>
    terms = {s for s in constants if re.fullmatch(r"loss_[a-z]+", s)}
    missing = []
    for key in _documented():
        if key.endswith("<position>"):  # per-position terms, named f"loss_kd_{pos}" by the distiller
            ok = key.removeprefix("train/").removesuffix("<position>") in heads
        else:
            ok = key in constants or key.removeprefix("train/") in terms
        if not ok:
            missing.append(key)
    assert missing == []
