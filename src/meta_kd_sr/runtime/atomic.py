"""Atomic file writes, for every file the library writes that another process or a later run reads.

A file is written to a temporary beside its target (same directory, hence same filesystem), flushed to disk
and renamed over the target with ``os.replace``: a reader, or a run restarted after a kill at any moment, sees
the old file or the new one, never a truncated one. The temporary is named ``.<name>.<pid>.<8 hex>.tmp``;
:func:`remove_stale_temporaries` deletes those whose process is gone (a SIGKILL leaves one behind).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

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


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_path` (durable): never a truncated file.

    Raises:
        OSError: the file could not be written, with its path and errno (torch's writer reports a full disk
            as ``basic_ios::clear: iostream error`` and a read-only folder as an enforce message, no path).
    """
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except RuntimeError as err:
        raise _write_error(Path(path), err) from err
    return Path(path)


def _write_error(path: Path, err: RuntimeError) -> OSError:
    """An ``OSError`` naming ``path`` and the likely cause of a failed ``torch.save`` there."""
    folder = path.parent if path.parent.is_dir() else Path(".")
    if shutil.disk_usage(folder).free < 64 * 2**20:
        return OSError(errno.ENOSPC, "could not write: no space left on device", os.fspath(path))
    if not os.access(folder, os.W_OK):
        return OSError(errno.EACCES, "could not write: the folder is not writable", os.fspath(path))
    return OSError(errno.EIO, f"could not write ({str(err).splitlines()[0][:200]})", os.fspath(path))


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
