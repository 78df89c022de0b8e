"""The committed record of every finished run: ``<out>/runs/<name>/record.json`` and its exported network.

The cache (``outputs/``) holds run dirs and checkpoints and does not outlive a machine; the store is small
enough to commit (a few KB per student; a teacher only up to ``MAX_NETWORK_BYTES``). A run whose record is
in the store is never trained again, on any machine. ``students.json`` lists every stored network: run
name, method, seed, iterations, sha256 and path. Paths in the store are relative to the repository (or,
for a store outside it, to the store), never a machine's absolute path.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from meta_kd_sr.runtime.finite import finite_or_none

from .plan import RunSpec

REPO = Path(__file__).resolve().parents[2]
MAX_NETWORK_BYTES = 2_500_000
MANIFEST = "students.json"
# what a record keeps: the spec, the run's measurements and its scores (no machine paths)
KEPT = (
    "name", "method", "group", "seed", "iterations", "s_per_it", "train_s", "cpu_s_per_it", "train_cpu_s",
    "process_s", "launches", "psnr_y", "ssim_y", "scores", "photos", "params", "meta_health", "meta_signal",
    "curve", "teacher_sha256",
)  # fmt: skip


def sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def repository_of(store: Path) -> Path | None:
    """The git checkout that holds ``store`` (its nearest folder with a ``.git``), or None."""
    store = Path(store).resolve()
    return next((p for p in (store, *store.parents) if (p / ".git").exists()), None)


def shown(path: Path, store: Path) -> str:
    """``path`` relative to the checkout that holds ``store`` when inside it, else relative to ``store``.

    The checkout is the store's, not the running code's: a benchmark run from another checkout with ``--out``
    pointing here writes the same paths as one run from here.
    """
    path = Path(path).resolve()
    repo = repository_of(store) or REPO
    base = repo if path.is_relative_to(repo) else Path(store).resolve()
    return str(path.relative_to(base))


def spec_dict(spec: RunSpec) -> dict[str, Any]:
    """The spec as JSON data (what a record must match to be reused)."""
    return asdict(spec) | {"overrides": list(spec.overrides)}


def load(store: Path, spec: RunSpec) -> dict[str, Any] | None:
    """The stored record of ``spec`` (``student``: the network's absolute path), or ``None``.

    A record without its network file (a teacher too big to commit) counts as absent.

    Raises:
        ValueError: the stored record was made with other settings.
    """
    folder = Path(store) / "runs" / spec.name
    path = folder / "record.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    mine = spec_dict(spec)
    if record["spec"] != mine:
        changed = sorted(k for k in mine if record["spec"].get(k) != mine[k])
        raise ValueError(
            f"stored record {path} was made with other settings ({', '.join(changed)} differ): delete its "
            "folder, or pass another --out"
        )
    network = folder / record["network"]
    if not network.is_file():
        return None
    return record | {"student": str(network), "stored": True}


def save(
    store: Path, spec: RunSpec, record: dict[str, Any], network: Path, git_commit: str
) -> dict[str, Any]:
    """Write the record of a finished, scored run (and its network when small enough); return it loaded."""
    folder = Path(store) / "runs" / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    network = Path(network)
    kept = {k: record[k] for k in KEPT if k in record}
    data = {
        **kept,
        **{k: getattr(spec, k) for k in ("name", "method", "group", "seed", "iterations")},
        "spec": spec_dict(spec),
        "network": network.name,
        "sha256": sha256(network),
        "bytes": network.stat().st_size,
        "git_commit": git_commit,
    }
    if data["bytes"] <= MAX_NETWORK_BYTES:
        shutil.copyfile(network, folder / network.name)
    tmp = folder / ".record.json.tmp"
    tmp.write_text(json.dumps(finite_or_none(data), indent=1, allow_nan=False) + "\n")
    tmp.replace(folder / "record.json")
    write_manifest(store)
    return data | {"student": str(folder / network.name if data["bytes"] <= MAX_NETWORK_BYTES else network)}


def public(record: dict[str, Any], store: Path) -> dict[str, Any]:
    """A record as result files show it: the network's path made portable, machine paths left out."""
    hidden = ("student", "run_dir", "stored", "launched", "spec")
    return {k: v for k, v in record.items() if k not in hidden} | {
        "path": shown(Path(record["student"]), store)
    }


def write_manifest(store: Path) -> Path:
    """``students.json``: every stored network (run name, method, seed, iterations, sha256, path)."""
    rows = []
    for path in sorted(Path(store).glob("runs/*/record.json")):
        r = json.loads(path.read_text())
        network = path.parent / r["network"]
        if network.is_file():
            rows.append(
                {
                    "name": r["name"],
                    "method": r["method"],
                    "group": r["group"],
                    "seed": r["seed"],
                    "iterations": r["iterations"],
                    "sha256": r["sha256"],
                    "path": shown(network, store),
                    "photos": r.get("photos", {}).get("set"),
                    "psnr_y": r.get("psnr_y"),
                }
            )
    out = Path(store) / MANIFEST
    out.write_text(json.dumps(rows, indent=1) + "\n")
    return out
