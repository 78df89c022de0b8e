"""Read an offline wandb run (``run-<id>.wandb``): ``python -m meta_kd_sr.cli.wandb_view <run dir | file>``.

``logger=wandb`` with ``WANDB_MODE=offline`` writes ``<run dir>/wandb/offline-run-*/run-<id>.wandb``, which
``wandb sync`` uploads but nothing shows offline. This prints its config and every logged key with its
number of rows and last value. The functions are what the tests read runs with.


wandb 0.31 writes the file from its service process, asynchronously: ``wandb.finish()`` returns before
the records are on disk (on a loaded machine only the file header was there). The run is complete once its
``exit`` record is written. wandb 0.31 ships the record protobuf (``wandb.proto``) but no Python reader of
the file, so this reads its framing: a 7-byte header, then LevelDB-log chunks (crc32, length, type) in
32 KiB blocks; a record split across blocks comes as FIRST, MIDDLE..., LAST chunks.
"""

# wandb_internal_pb2 is generated protobuf code: its message classes are not visible to a static checker.
# pyright: reportAttributeAccessIssue=false

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # wandb is optional: imported when a file is read, never by importing the library
    from wandb.proto import wandb_internal_pb2

HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
CHUNK = struct.Struct("<IHB")  # crc32 of (type byte + data), data length, type
BLOCK = 32768
FULL, FIRST, LAST = 1, 2, 4


def read_records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """The complete records of ``path`` so far; stops at a chunk still being written."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if not data.startswith(HEADER):
        return
    pos, parts = len(HEADER), b""
    while True:
        if BLOCK - pos % BLOCK < CHUNK.size:  # a block's tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
        if pos + CHUNK.size > len(data):
            return
        crc, size, kind = CHUNK.unpack_from(data, pos)
        body = data[pos + CHUNK.size : pos + CHUNK.size + size]
        if len(body) < size or zlib.crc32(body, zlib.crc32(bytes([kind]))) != crc:
            return
        pos += CHUNK.size + size
        parts = body if kind in (FULL, FIRST) else parts + body
        if kind in (FULL, LAST):
            yield wandb_internal_pb2.Record.FromString(parts)


def wait_for_finished_run(path: Path, limit_s: float = 600.0) -> list[wandb_internal_pb2.Record]:
    """All records of the run in ``path`` once its ``exit`` record is written (polls up to ``limit_s``)."""
    deadline = time.monotonic() + limit_s
    while True:
        records = list(read_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            kinds = [r.WhichOneof("record_type") for r in records]
            raise TimeoutError(f"{path}: no exit record after {limit_s:.0f} s; records so far: {kinds}")
        time.sleep(0.2)


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def history_keys(records: list[wandb_internal_pb2.Record]) -> dict[str, list[str]]:
    """``{logged key: [JSON values, in order]}`` of the run's history records."""
    history: dict[str, list[str]] = {}
    for record in records:
        for item in record.history.item:
            history.setdefault(_key(item), []).append(item.value_json)
    return history


def config_keys(records: list[wandb_internal_pb2.Record]) -> set[str]:
    """Top-level config keys the run recorded (at init and by later config updates)."""
    updates = [u for r in records for u in (*r.run.config.update, *r.config.update)]
    return {u.key or u.nested_key[0] for u in updates}


def history_values(records: list[wandb_internal_pb2.Record], key: str) -> list[Any]:
    """The values logged under ``key``, one per history record, parsed from JSON.

    A media value (an image list, a table) is written as one item per field (``nested_key = [key, field]``):
    those come back as one dict again.
    """
    values = []
    for record in records:
        fields: dict[str, Any] = {}
        for item in record.history.item:
            path = [item.key] if item.key else list(item.nested_key)
            if path[0] != key:
                continue
            if len(path) == 1:
                values.append(json.loads(item.value_json))
            else:
                fields["/".join(path[1:])] = json.loads(item.value_json)
        if fields:
            values.append(fields)
    return values


def config_values(records: list[wandb_internal_pb2.Record]) -> dict[str, Any]:
    """``{top-level key: value}`` of the run's config, the last update of a key winning."""
    updates = [u for r in records for u in (*r.run.config.update, *r.config.update)]
    return {u.key or u.nested_key[0]: json.loads(u.value_json) for u in updates}


def run_file(path: Path) -> Path:
    """The ``run-*.wandb`` file of ``path``: the file itself, or the newest one under a run dir."""
    if path.is_file():
        return path
    found = sorted(Path(path).rglob("run-*.wandb"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
            f"no run-*.wandb file in {path} or below (logger=wandb with WANDB_MODE=offline)"
        )
    return found[-1]


def describe(records: list[wandb_internal_pb2.Record]) -> str:
    """The run's config (one line per top-level key) and each logged key: rows and last value."""
    lines = ["config:"]
    for key, value in sorted(config_values(records).items()):
        lines.append(f"  {key}: {json.dumps(value)[:150]}")
    lines.append("logged (rows, last value):")
    for key, values in sorted(history_keys(records).items()):
        lines.append(f"  {key}: {len(values)}, {values[-1][:100]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print what an offline wandb run holds."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m meta_kd_sr.cli.wandb_view", description=main.__doc__)
    parser.add_argument("path", type=Path, help="a run dir (searched for run-*.wandb) or a run-*.wandb file")
    args = parser.parse_args(argv)
    path = run_file(args.path)
    print(f"{path}\n{describe(list(read_records(path)))}")


if __name__ == "__main__":
    main()
