"""Which code made a result: version, commit, uncommitted changes, threads."""

from __future__ import annotations

import subprocess

import torch

import sgsc
from sgsc import provenance


def test_code_state_names_version_commit_and_changes():
    state = provenance.code_state()
    assert state["version"] == sgsc.__version__
    assert len(state["git_sha"]) == 40 or state["git_sha"] == "unknown"
    assert state["sgsc_dirty"] in (True, False, None)
    assert provenance.code_state() is state  # read once per process


def test_git_state_sees_uncommitted_changes(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    git("add", "f.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    clean = provenance.git_state(tmp_path)
    assert clean["dirty"] is False and len(clean["sha"]) == 40
    (tmp_path / "f.txt").write_text("b")
    assert provenance.git_state(tmp_path)["dirty"] is True
    assert provenance.git_state(tmp_path / "nowhere")["sha"] == "unknown"


def test_threads_is_torchs_count():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert provenance.threads() == 1
    finally:
        torch.set_num_threads(before)
