"""Short, readable names for sweep run dirs and report rows.

Optuna samples full-precision floats (``meta.lr=0.00012345678901234``) and Hydra names each trial's run dir
after all its overrides: trial dirs of 193-196 characters, close to the 255-character file-name limit. Here
floats keep 3 significant digits and a name longer than ``limit`` ends in a short hash of the full name;
the full overrides stay in each run dir's ``.hydra/overrides.yaml`` (the lookup from name to setting).
"""

from __future__ import annotations

import hashlib
import re

_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)$")


def readable_value(value: str, digits: int = 3) -> str:
    """A float with ``digits`` significant digits (``0.000123456`` -> ``0.000123``); others as given."""
    if not _FLOAT.match(value):
        return value
    return f"{float(value):.{digits}g}"


def readable_override(override: str, digits: int = 3) -> str:
    """``key=value`` with a float value rounded (:func:`readable_value`); other overrides unchanged."""
    key, sep, value = override.partition("=")
    return f"{key}{sep}{readable_value(value, digits)}" if sep else override


def short_run_name(override_dirname: str, limit: int = 96) -> str:
    """Hydra's ``override_dirname`` (``a=1,b=0.1234567``) with rounded floats, at most ``limit`` characters.

    A name still longer keeps its first characters and ends in ``~`` plus 8 hex digits of a SHA-1 of the
    full name, so two settings never share a dir.
    """
    name = ",".join(readable_override(part) for part in str(override_dirname).split(","))
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(str(override_dirname).encode()).hexdigest()[:8]
    return f"{name[: limit - 9]}~{digest}"
