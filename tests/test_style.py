"""House rules: the code base is ruff clean (the settings are in pyproject.toml), and every
module has its own test file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it is in requirements.lock)")
    done = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]


def test_every_module_has_its_own_test_file():
    """``sgsc/<room>/<name>.py`` is tested in ``tests/test_<name>.py``; the baselines
    package in ``tests/test_baselines.py``.  The entry points are tested through the CLI's."""
    package = ROOT / "sgsc"
    names = {p.stem for p in package.rglob("*.py") if p.parent.name != "baselines"}
    names -= {"__init__", "__main__"}
    names |= {"baselines"}
    missing = sorted(n for n in names if not (ROOT / "tests" / f"test_{n}.py").exists())
    assert not missing, f"modules without a test file: {missing}"
    stems = [p.stem for p in package.rglob("*.py") if p.stem not in ("__init__", "__main__")]
    assert len(stems) == len(set(stems)), "two modules share a name: one test file each"


BINARY = (".whl", ".pt", ".pth", ".ckpt", ".so", ".zip", ".tar.gz", ".tgz", ".npz", ".pkl")


def _git(*args: str) -> str:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=True).stdout


def test_nothing_binary_is_tracked_and_gitignore_keeps_it_out():
    """Wheels, checkpoints, archives and data never enter git (they are fetched or
    generated); .gitignore keeps a new one out."""
    tracked = _git("ls-files").splitlines()
    assert not [f for f in tracked if f.endswith(BINARY)]
    big = [f for f in tracked if (ROOT / f).is_file() and (ROOT / f).stat().st_size > 5 << 20]
    assert not big, f"files over 5 MB are tracked: {big}"
    probes = ["x.whl", "runs/a/checkpoint.pt", "data/mnist.npz", "a.ckpt", "a.tar.gz"]
    ignored = _git("check-ignore", "--no-index", *probes).splitlines()
    assert ignored == probes
