"""Atomic file writes, for every file the library writes that another process or a later run reads.

A file is written to a temporary beside its target (same directory, hence same filesystem), flushed to disk
and renamed over the target with ``os.replace``: a reader, or a run restarted after a kill at any moment, sees
the old file or the new one, never a truncated one. The temporary is named ``.<name>.<pid>.<8 hex>.tmp``;
:func:`remove_stale_temporaries` deletes those whose process is gone (a SIGKILL leaves one behind).
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


@contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on a clean exit it replaces ``path``, on an error it is deleted.

    Args:
        path: the destination file; parent folders are created.
        durable: fsync the file and its folder, so the new file also survives a power cut (checkpoints);
            ``False`` for files that can be made again (decoded caches, generated LR images).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if durable:
            _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
        if durable:
            with contextlib.suppress(OSError):  # not every filesystem syncs a folder
                _fsync(path.parent, os.O_RDONLY)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that atomic writes of killed processes left in ``folder``.

    A temporary file names the process that writes it; files of processes still running on this machine
    are kept (they are being written).

    Args:
        folder: a destination folder of :func:`atomic_path` (may not exist).

    Returns:
        The files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        match = _TEMPORARY.match(path.name)
        if match and path.is_file() and not _process_alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or a number this system cannot check: leave its file
    return True
