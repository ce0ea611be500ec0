"""Which code and which machine made a result: the package version, the git commit, the
thread count, the CPU and the math libraries torch computes with.

Every result of :func:`sgsc.experiments.runs.run` carries :func:`code_state`, the torch thread count
and :func:`machine`, and each code that trained a run's epochs is recorded with
:func:`training_state`.  The run folder key includes the version and the thread count: on
a CPU the summation order of a parallel kernel -- and with it every later number --
depends on how many threads share the work.  The CPU is recorded but not keyed (a key
would hide every cached run from a second machine): the same seed gives other numbers on
another CPU (other BLAS/oneDNN kernels, other rounding), so a result says where it was
made, and the report says which CPUs made its runs.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import os
import platform
import re
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from sgsc.reporting.report import save_json

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_THREADS = 1  # one thread per run: the CLI, the notebooks and every sweep worker
# the packages whose versions a notebook's run info and the report's build record
PACKAGES = ("sgsc", "torch", "numpy", "scikit-learn", "pandas", "matplotlib", "seaborn",
            "papermill", "nbconvert", "ipykernel")


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


def training_state() -> dict[str, Any]:
    """:func:`code_state` plus the CPU and thread count: who trained a run's epochs."""
    return code_state() | {"cpu": machine()["cpu"], "threads": threads()}


@functools.lru_cache(maxsize=1)
def machine() -> dict[str, Any]:
    """The CPU model, the instruction set torch dispatches to, and the BLAS and oneDNN
    builds torch reports, plus the GPU when one is present."""
    import torch

    config = torch.__config__.show()
    onednn = re.search(r"(?:MKL-DNN|oneDNN)\s+(v[\d.]+)", config)
    mkl = re.search(r"Math Kernel Library Version ([\w.]+)", config)
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "blas": (f"{blas.group(1)} {mkl.group(1)}" if blas and mkl and blas.group(1) == "mkl"
                     else blas.group(1) if blas else "unknown"),
            "onednn": onednn.group(1) if onednn else None, "torch": torch.__version__,
            "gpu": gpu}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, sysctl on macOS), or the
    architecture when the system does not say."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            done = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                  capture_output=True, text=True, timeout=5, check=True)
            if done.stdout.strip():
                return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


# ----------------------------------------------------------------------------- notebooks


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Installed version of each package (``"absent"`` when not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def hardware() -> dict[str, Any]:
    """The CPU (model, instruction set, BLAS and oneDNN builds), CPU count, torch threads
    and GPU (if any) of this process."""
    import torch

    return machine() | {"gpu": machine()["gpu"] or "none", "machine": platform.machine(),
                        "system": platform.system(), "python": platform.python_version(),
                        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "peak_gflops": round(peak_flops() / 1e9, 1)}


def data_checksums(datasets: Sequence[str]) -> list[dict[str, Any]]:
    """Per file of each data set: its expected sha256 and whether the local copy verifies.

    ``digits`` ships inside scikit-learn; its checksum is the sha256 of the image and
    label arrays as loaded.
    """
    from sgsc.experiments import data

    rows = []
    for name in dict.fromkeys(data.SUBSETS.get(n, (n,))[0] for n in datasets):
        if name in data.FILES:
            for status, file in zip(data.verify((name,)), data.FILES[name], strict=True):
                rows.append({"dataset": name, "file": file.name, "sha256": file.sha256,
                             "verified": bool(status.ok)})
        elif name == "digits":
            from sklearn.datasets import load_digits

            bunch = load_digits()
            digest = hashlib.sha256(bunch.images.astype("<f8").tobytes()
                                    + bunch.target.astype("<i8").tobytes()).hexdigest()
            rows.append({"dataset": name, "file": "sklearn.datasets.load_digits",
                         "sha256": digest, "verified": True})
        else:
            choices = ", ".join(data.DATASETS)
            raise ValueError(f"unknown data set {name!r}; choose from {choices}")
    return rows


def run_info(notebook: str, parameters: dict[str, Any], datasets: Sequence[str]) -> dict:
    """Everything needed to say how a notebook's numbers were made."""
    return {"notebook": notebook, "parameters": dict(parameters),
            "finished": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "git": git_state(), "packages": package_versions(), "hardware": hardware(),
            "data": data_checksums(datasets)}


def save_run_info(report_dir: str | os.PathLike[str], notebook: str,
                  parameters: dict[str, Any], datasets: Sequence[str]) -> Path:
    """Write :func:`run_info` to ``metrics/<notebook>__run.json``."""
    return save_json(run_info(notebook, parameters, datasets), report_dir, f"{notebook}__run")


def build_info() -> dict[str, Any]:
    """What the report's build record says of the process building it: git state and
    package versions (:func:`sgsc.reporting.report.build_report`'s ``build``)."""
    return {"git": git_state(), "packages": package_versions()}


@functools.lru_cache(maxsize=1)
def peak_flops(seconds: float = 3.0, size: int = 1024) -> float:
    """FLOP/s of this process's torch threads on a large float32 matrix product -- the
    rate no training step can beat, measured once per process (the best of a few
    rounds of about ``seconds`` in all): the floor of a study's cost is its FLOPs over it.
    The best, not the mean: a round slowed by other work on the core would flatter every
    ratio to the floor; a 1 s measurement varied from 82 to 99 GFLOP/s here."""
    import time

    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm up the kernels
    best, spent = 0.0, 0.0
    while spent < seconds:
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        elapsed = time.perf_counter() - start
        spent += elapsed
        best = max(best, 4 * 2 * size**3 / elapsed)
    return best
