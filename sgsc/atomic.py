"""Atomic file writes: a crash leaves the old file or the new one, never half of either.

Every file the package writes that a later run reads back -- data downloads, packed
models, checkpoints, histories, results -- goes through :func:`write_bytes`.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def write_bytes(path: str | os.PathLike[str], payload: bytes) -> None:
    """Write ``payload`` to a temporary file beside ``path``, flush it, rename it over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    """:func:`write_bytes` of ``obj`` as indented JSON (unknown types via ``str``)."""
    write_bytes(path, json.dumps(obj, indent=1, default=str).encode())


def torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """:func:`write_bytes` of ``torch.save(obj)``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())
