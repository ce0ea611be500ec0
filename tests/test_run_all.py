"""run_all.sh refuses bad arguments before it sets anything up or runs anything."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("args", "message"), [
    (["--profile", "papr"], "--profile must be quick, paper or full, not 'papr'"),
    (["--device", "gpu"], "--device must be auto, cpu or cuda, not 'gpu'"),
    (["--threads", "two"], "--threads must be a non-negative integer, not 'two'"),
    (["--jobs", "0"], "--jobs must be a positive integer, not '0'"),
    (["--colour"], "unknown argument --colour"),
])
def test_bad_arguments_are_refused_with_a_clear_message(args, message):
    done = subprocess.run(["bash", str(ROOT / "run_all.sh"), *args], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr


def test_help_names_every_option():
    done = subprocess.run(["bash", str(ROOT / "run_all.sh"), "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0
    for option in ("--profile", "--force", "--device", "--threads", "--jobs"):
        assert option in done.stdout
