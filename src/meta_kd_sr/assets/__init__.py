"""Files shipped with the package: the tiny teacher of the embedded demo and its manifest.

``tiny_teacher_x4.pt`` is the exported EDSR 32 x 4 (x4) teacher that ``make demo``, ``experiment=tiny_kd`` /
``tiny_mkd`` and the notebooks distil from by default. ``tiny_teacher_x4.json`` records the command that
trained it, its SHA-256 and its held-out scores; :func:`shipped_teacher` checks the file against it.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

TEACHER_FILE = "tiny_teacher_x4.pt"
MANIFEST_FILE = "tiny_teacher_x4.json"
# how to make it again (the demo's --retrain-teacher runs the same recipe)
TEACHER_RECIPE = (
    "meta-kd-sr-train experiment=tiny_teacher lq_patch=16 trainer.max_steps=1000 "
    "trainer.val_check_interval=250 optim.scheduler.step_size=600"
)


def _asset(name: str) -> Path:
    return Path(str(resources.files("meta_kd_sr.assets") / name))


def teacher_manifest() -> dict[str, Any]:
    """The shipped teacher's manifest: ``command``, ``sha256``, ``params``, ``held_out`` scores."""
    return json.loads(_asset(MANIFEST_FILE).read_text())


def shipped_teacher(verify: bool = True) -> Path:
    """The path of the shipped tiny teacher (``tiny_teacher_x4.pt``), checked against its manifest's SHA-256.

    Raises:
        FileNotFoundError: the file is missing from this installation.
        ValueError: its bytes differ from the manifest's SHA-256 (a damaged or replaced file).
    """
    path = _asset(TEACHER_FILE)
    if not path.is_file():
        raise FileNotFoundError(
            f"the shipped teacher {path} is missing: reinstall, or train one: {TEACHER_RECIPE}"
        )
    if verify:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        expected = teacher_manifest()["sha256"]
        if digest != expected:
            raise ValueError(f"the shipped teacher {path} has sha256 {digest}, not its manifest's: reinstall")
    return path
