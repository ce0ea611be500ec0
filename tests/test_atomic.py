"""Atomic writes: all or nothing, the umask's mode, no stale temporary files left."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from sgsc.fileformat import atomic


@pytest.fixture
def umask():
    def use(mask):
        old = os.umask(mask)
        restore.append(old)

    restore = []
    yield use
    for old in restore:
        os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_get_the_mode_the_umask_gives(tmp_path, umask, mask, mode):
    umask(mask)
    path = tmp_path / "result.json"
    atomic.write_json({"a": 1}, path)
    assert path.stat().st_mode & 0o777 == mode
    atomic.write_bytes(path, b"again")  # replacing keeps the rule
    assert path.stat().st_mode & 0o777 == mode and path.read_bytes() == b"again"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "model.sgsc"
    atomic.write_bytes(path, b"old")

    def broken_replace(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(atomic.WriteError, match=f"cannot write {path}: no space left"):
        atomic.write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.sgsc"]


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    path = tmp_path / "checkpoint.pt"
    # a real process that starts a write and is killed (SIGKILL) before the rename
    code = ("import os, sys, tempfile\n"
            "from sgsc.fileformat import atomic\n"
            "orig = atomic.os.replace\n"
            "atomic.os.replace = lambda *a: os.kill(os.getpid(), 9)\n"
            f"atomic.write_bytes({str(path)!r}, b'half')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == -9
    leftovers = list(tmp_path.glob(".checkpoint.pt.*.tmp"))
    assert len(leftovers) == 1 and not path.exists()
    atomic.write_bytes(path, b"whole")
    assert path.read_bytes() == b"whole"
    assert list(tmp_path.glob(".*.tmp")) == []


def test_a_live_writers_temporary_file_is_left_alone(tmp_path):
    path = tmp_path / "result.json"
    host = socket.gethostname().replace(".", "_")
    mine = tmp_path / f".result.json.{host}.{os.getpid()}.abcd.tmp"
    mine.write_bytes(b"in progress")  # this process is alive: another thread's write
    other_host = tmp_path / ".result.json.elsewhere.1.abcd.tmp"
    other_host.write_bytes(b"in progress")
    atomic.write_bytes(path, b"x")
    assert mine.exists() and other_host.exists()
    old = time.time() - atomic.STALE_AFTER_S - 60
    os.utime(other_host, (old, old))  # a day old: its writer is gone
    atomic.write_bytes(path, b"y")
    assert mine.exists() and not other_host.exists()
