"""Which code and machine made a result: version, commit, uncommitted changes, threads,
CPU, BLAS and oneDNN."""

from __future__ import annotations

import subprocess

import torch

import sgsc
from sgsc.experiments import provenance


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


def test_machine_names_the_cpu_and_the_math_libraries_torch_reports():
    info = provenance.machine()
    assert info["cpu"] == provenance.cpu_model() and info["cpu"] not in ("", "unknown")
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["torch"] == torch.__version__
    config = torch.__config__.show()
    assert info["blas"].split()[0] in config  # e.g. "mkl 2024.2" from BLAS_INFO=mkl
    assert info["onednn"] is None or info["onednn"] in config
    assert provenance.machine() is info  # read once per process


def test_training_state_is_the_code_state_with_cpu_and_threads():
    state = provenance.training_state()
    assert state == provenance.code_state() | {"cpu": provenance.cpu_model(),
                                               "threads": torch.get_num_threads()}


def test_a_run_says_which_cpu_trained_it_and_which_evaluated_it(tmp_path):
    from sgsc.experiments import runs

    row = runs.run("float", "digits", out_dir=tmp_path, progress=False, epochs=1)
    assert row["trained_on"] == provenance.cpu_model()
    assert row["machine"] == provenance.machine()
    assert row["trained_by"] == [provenance.training_state()]


def test_peak_flops_is_a_matmul_rate_measured_once_per_process():
    import time

    import torch

    from sgsc.experiments import provenance

    provenance.peak_flops.cache_clear()
    start = time.perf_counter()
    peak = provenance.peak_flops(seconds=0.2, size=256)
    assert time.perf_counter() - start < 5.0
    # a 256 x 256 product timed here: the peak is at least what one product achieves
    a = torch.randn(256, 256)
    torch.mm(a, a)
    t = time.perf_counter()
    torch.mm(a, a)
    once = 2 * 256**3 / (time.perf_counter() - t)
    assert peak >= 0.5 * once and peak > 1e8
    assert provenance.peak_flops(seconds=0.2, size=256) == peak  # cached, not measured again
    provenance.peak_flops.cache_clear()
