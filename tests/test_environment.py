"""The pinned environment: a full lock, and environment.yml installing exactly it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _requirements(path: Path) -> dict[str, set[str]]:
    """``name -> versions`` of a requirements file (a pin may differ by platform marker)."""
    pins: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].split(";")[0].strip()
        if line:
            name, version = line.split("==")
            pins.setdefault(name.strip().lower().replace("_", "-"), set()).add(version.strip())
    return pins


def test_lock_pins_every_package_exactly():
    pins = _requirements(ROOT / "requirements.lock")
    assert pins["torch"] == {"2.14.1"} and pins["torchvision"] == {"0.29.1"}
    for required in ("papermill", "jupyterlab", "nbconvert", "ipykernel", "matplotlib",
                     "seaborn", "scikit-learn", "pandas", "tqdm", "pytest", "hypothesis"):
        assert all(re.fullmatch(r"\d+(\.\d+)+", v) for v in pins[required]), required
    # not only the direct requirements: what they pull in is pinned too
    for pulled_in in ("scipy", "threadpoolctl", "jinja2", "pillow", "sympy", "cloudpickle"):
        assert pulled_in in pins, pulled_in


def test_every_direct_requirement_is_locked_at_its_version():
    direct = _requirements(ROOT / "requirements.in")
    locked = _requirements(ROOT / "requirements.lock")
    assert direct and all(locked.get(name) == versions for name, versions in direct.items())


def test_environment_yml_installs_exactly_the_lock():
    spec = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert spec["channels"] == ["conda-forge"]
    conda = [d for d in spec["dependencies"] if not isinstance(d, dict)]
    [pip] = [d["pip"] for d in spec["dependencies"] if isinstance(d, dict)]
    assert conda == ["python=3.11", "pip"]  # nothing from conda that the lock might differ on
    assert pip == ["-r requirements.lock", "-e ."]


def test_the_package_version_is_the_one_results_record():
    import tomllib

    import sgsc

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == sgsc.__version__


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./run_tests.sh" in readme and "./run_all.sh" in readme and "./run_tests.sh" in ci
