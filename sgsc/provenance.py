"""Which code made a result: the package version, the git commit, and its thread count.

Every result of :func:`sgsc.runs.run` carries :func:`code_state` and the torch thread
count, and the run folder key includes both the version and the thread count, because on
a CPU the summation order of a parallel kernel -- and with it every later number --
depends on how many threads share the work.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_THREADS = 1  # one thread per run: the CLI, the notebooks and every sweep worker


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def git_state(root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The commit (``sha``) and whether the working tree has uncommitted changes."""
    root = Path(root) if root is not None else ROOT
    sha = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {"sha": sha or "unknown", "dirty": None if status is None else bool(status)}


@functools.lru_cache(maxsize=1)
def code_state() -> dict[str, Any]:
    """``version``, ``git_sha`` and ``sgsc_dirty`` (uncommitted changes under ``sgsc/``,
    None outside a git checkout) of the code this process runs: read once, at the first
    call, so that later edits of the checkout are not blamed on code loaded before them."""
    import sgsc

    status = _git(ROOT, "status", "--porcelain", "--", "sgsc")
    return {"version": sgsc.__version__, "git_sha": _git(ROOT, "rev-parse", "HEAD") or "unknown",
            "sgsc_dirty": None if status is None else bool(status)}


def threads() -> int:
    """torch's CPU thread count now (it changes results on a CPU)."""
    import torch

    return torch.get_num_threads()
