"""The speed benchmarks run and report what they measured (their numbers are not checked
here: speed targets are printed by the benchmarks, never asserted in tests)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_shrink_benchmark_times_both_runs_and_writes_its_ratio(tmp_path):
    out = tmp_path / "shrink.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "shrink.py"), "--data",
                           "digits", "--epochs", "2", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "ratio" in done.stdout
    measured = json.loads(out.read_text())
    assert len(measured["float_epoch_s"]) == len(measured["sc_epoch_s"]) == 2
    assert measured["ratio"] == measured["sc_s"] / measured["float_s"] > 0
    assert len(measured["sc_params"]) == 2 and measured["threads"] == 1


def test_shrink_benchmark_refuses_nonsense():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "shrink.py"), "--epochs",
                           "0"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "--epochs and --batch-size must be positive" in done.stderr


def _floor(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "floor.py"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_floor_benchmark_times_a_kept_models_widths_against_the_full_network():
    done = _floor("--steps", "2", "--warmup", "0", "--batch-size", "8")
    assert done.returncode == 0, done.stderr
    # the shrunk variants take the widths of the report's model file, not the defaults
    widths = done.stdout.split("widths (")[1].split(")")[0]
    assert widths != "32, 32, 64, 64"
    for variant in ("float-full", "float-shrunk", "sc-shrunk"):
        assert f"{variant:<14}{8:>6}" in done.stdout and f"{variant:<14}{32:>6}" in done.stdout
    for ratio in ("shrunk_vs_full = ", "quantizer_share = ", "batch_gain = "):
        assert ratio in done.stdout


def _benchmark_module(name: str):
    """A benchmark script imported as a module (as its run does, with benchmarks/ on the
    path for the modules it shares)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_interleaved_timing_rotates_the_order_and_times_each_call():
    timing = _benchmark_module("timing")
    calls, pending = [], []
    steps = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    # step c "queues work" that only a sync finishes (as a GPU kernel): its time must count
    steps["c"] = lambda: (calls.append("c"), pending.append(1))

    def sync() -> None:
        if pending:
            pending.clear()
            time.sleep(0.02)

    times = timing.interleaved(steps, rounds=3, warmup=1, sync=sync)
    # warmup in order, then each round starts one step later
    assert "".join(calls) == "abc" + "abc" + "bca" + "cab"
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert min(times["c"]) >= 0.019  # the queued work is timed where it was issued...
    assert max(times["a"] + times["b"]) < min(times["c"])  # ...not in the step after it


def test_floor_benchmark_ratios_follow_from_its_rows():
    floor = _benchmark_module("floor")
    rows = [{"variant": "float-full", "batch": 8, "ms_per_step": 10.0, "x_floor": 1.5,
             "us_per_image": 1250.0},
            {"variant": "float-shrunk", "batch": 8, "ms_per_step": 3.0, "x_floor": 6.0,
             "us_per_image": 375.0},
            {"variant": "sc-shrunk", "batch": 8, "ms_per_step": 4.0, "x_floor": 8.0,
             "us_per_image": 500.0},
            {"variant": "sc-shrunk", "batch": 32, "ms_per_step": 8.0, "x_floor": 4.0,
             "us_per_image": 250.0}]
    assert floor.summary(rows, 8) == {"shrunk_vs_full": 4.0, "quantizer_share": 0.25,
                                      "batch_gain": 2.0}


def test_floor_benchmark_refuses_nonsense(tmp_path):
    done = _floor("--steps", "0", timeout=120)
    assert done.returncode == 2 and "--steps must be at least 1" in done.stderr
    done = _floor("--model", str(tmp_path / "none.sgsc"), timeout=120)
    assert done.returncode == 2 and "no such file" in done.stderr
