"""The speed benchmarks run and report what they measured (their numbers are not checked
here: speed targets are printed by the benchmarks, never asserted in tests)."""

from __future__ import annotations

import json
import subprocess
import sys
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
