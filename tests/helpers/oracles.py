"""The independent reference implementations in ``tests/oracles/``, loaded by file name."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ORACLES = Path(__file__).resolve().parents[1] / "oracles"


def load_oracle(name: str) -> ModuleType:
    """The module ``tests/oracles/<name>.py`` (not a package: loaded from its file)."""
    spec = importlib.util.spec_from_file_location(f"_oracle_{name}", ORACLES / f"{name}.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"no oracle {name!r} in {ORACLES}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
