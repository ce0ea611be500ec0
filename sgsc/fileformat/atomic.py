"""Atomic file writes: a crash leaves the old file or the new one, never half of either.

Every file the package writes that a later run reads back -- data downloads, packed
models, checkpoints, histories, results -- goes through :func:`write_bytes`: a temporary
file beside the target, flushed and renamed over it.  The file gets the mode the umask
gives a new file (``mkstemp``'s private 0600 would survive the rename and lock others out
of a shared data folder or sweep output).  A write killed half way leaves its temporary
file behind; the next write to the same path removes it (see :func:`_remove_stale`).
"""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

STALE_AFTER_S = 24 * 3600  # a temporary file of another host is left alone for a day
# Faults of the environment, not of the program: each becomes one WriteError.
ENVIRONMENT_ERRNOS = {errno.EACCES: "permission denied", errno.EROFS: "read-only file system",
                      errno.ENOSPC: "no space left on the device",
                      errno.EDQUOT: "disk quota exceeded", errno.EPERM: "not permitted"}


class WriteError(RuntimeError):
    """A file cannot be written for a reason of the machine (permissions, a read-only or
    full disk); the message names the path and what to do.  Nothing already written is
    lost: the old file, if any, is still in place."""


def _write_error(path: Path, err: OSError) -> WriteError:
    reason = ENVIRONMENT_ERRNOS.get(err.errno, err.strerror or str(err))
    hint = ("free some space (or point the output elsewhere) and run the same command "
            "again: finished work is kept and a run resumes from its last checkpoint"
            if err.errno in (errno.ENOSPC, errno.EDQUOT) else
            "choose a folder you can write to (--out) or fix its permissions")
    return WriteError(f"cannot write {path}: {reason}; {hint}")


def ensure_writable(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` if needed and check that a file can be written in it, so that an
    unwritable output fails at once, not after the first hour of training."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".sgsc-write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        if err.errno in ENVIRONMENT_ERRNOS:
            raise _write_error(folder, err) from err
        raise
    return folder


def _umask() -> int:
    """The process umask, read without changing it where /proc tells it (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-and-restore
    os.umask(mask)
    return mask


def _prefix(path: Path) -> str:
    return f".{path.name}."


def _host() -> str:
    return socket.gethostname().replace(".", "_")  # dots separate the name's fields


def _remove_stale(path: Path) -> None:
    """Remove temporary files of earlier writes to ``path`` whose writer is gone: those of
    this host whose process no longer runs, and any older than :data:`STALE_AFTER_S`."""
    host = _host()
    for temp in path.parent.glob(f"{_prefix(path)}*.tmp"):
        parts = temp.name[len(_prefix(path)):].split(".")
        try:
            stale = time.time() - temp.stat().st_mtime > STALE_AFTER_S
            if not stale and len(parts) >= 3 and parts[0] == host and parts[1].isdigit():
                stale = not _alive(int(parts[1]))
            if stale:
                temp.unlink()
        except OSError:
            continue  # gone already, or not ours to remove


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_bytes(path: str | os.PathLike[str], payload: bytes) -> None:
    """Write ``payload`` to a temporary file beside ``path``, flush it, rename it over."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        owner = f"{_prefix(path)}{_host()}.{os.getpid()}."
        fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=owner, suffix=".tmp")
    except OSError as err:
        if err.errno in ENVIRONMENT_ERRNOS:
            raise _write_error(path, err) from err
        raise
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException as err:
        Path(temp_name).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS:
            raise _write_error(path, err) from err
        raise


def write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    """:func:`write_bytes` of ``obj`` as indented JSON (unknown types via ``str``)."""
    write_bytes(path, json.dumps(obj, indent=1, default=str).encode())


def torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """:func:`write_bytes` of ``torch.save(obj)``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())
