"""The speed benchmarks run and report what they measured (their numbers are not checked
here: speed targets are printed by the benchmarks, never asserted in tests)."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

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


def test_learnt_table_bits_is_the_code_length_of_coding_one_code_at_a_time():
    bounds = _benchmark_module("coder_bounds")
    codes = np.array([0, 2, 2, 1, 2, 0, 2, 2, 3, 2])
    for strength in bounds.PRIORS:
        counts, bits = np.zeros(4), 0.0
        for code in codes:  # each code's probability from the counts before it
            bits -= math.log2((counts[code] + strength) / (counts.sum() + 4 * strength))
            counts[code] += 1
        assert bounds.learnt_table_bits(codes, strength) == pytest.approx(bits, rel=1e-12)


def test_coder_bounds_order_a_groups_costs_as_their_definitions_promise():
    bounds = _benchmark_module("coder_bounds")
    rng = np.random.default_rng(0)
    # rows of two spreads, each row's codes drawn alone: one table for all is worse than
    # a table per row, and a learnt table pays about (K - 1)/2 log2 n above the entropy
    group = np.concatenate([rng.integers(-1, 2, (8, 400)), rng.integers(-7, 8, (8, 400))])
    cost = bounds.group_bits(group, bits=4)
    assert cost["packed"] == 4 * group.size
    assert cost["per_row"] < 0.95 * cost["order0"]
    assert cost["order1"] <= cost["order0"] + 1e-6
    regret = (15 - 1) / 2 * math.log2(group.size) + 64  # + the range header and choice
    assert cost["order0"] < bounds.adaptive_bits(group) < cost["order0"] + regret
    # a file may keep the coder's choice where it is cheaper (a Laplace per row, here)
    assert cost["adaptive"] == min(cost["coder"], bounds.adaptive_bits(group))
    assert cost["coder"] < cost["packed"]


def test_coder_bounds_reads_a_files_codes_at_its_bit_depths(tmp_path, capsys):
    import torch

    from sgsc.core.compress import SelfCompression
    from sgsc.experiments.models import build_model
    from sgsc.fileformat.export import byte_budget, save_compressed

    bounds = _benchmark_module("coder_bounds")
    torch.manual_seed(0)
    sc = SelfCompression(build_model("mnist_cnn"))
    with torch.no_grad():
        for bits in sc.bit_depths().values():
            bits.copy_(torch.rand(bits.shape) * 6 + 0.2)
            bits[::4] = 0.0
    models = tmp_path / "models"
    (models / "mnist").mkdir(parents=True)
    save_compressed(sc, models / "mnist" / "sc-s0-a.sgsc")
    save_compressed(sc, models / "mnist" / "sc-s0-a.entropy.sgsc", coding="entropy")
    entry = {"data": "mnist", "method": "sc", "seed": 0}
    (models / "manifest.json").write_text(json.dumps([
        entry | {"file": "mnist/sc-s0-a.sgsc"},
        entry | {"file": "mnist/sc-s0-a.entropy.sgsc", "encoding": "entropy"}]))
    groups = bounds.code_groups(models / "mnist" / "sc-s0-a.sgsc")
    budget = byte_budget(models / "mnist" / "sc-s0-a.sgsc")
    # the same codes as the file packs: as many bits, each code within its depth
    assert sum(b * g.size for b, g in groups) == 8 * sum(x["packed_bytes"]
                                                         for x in budget["layers"])
    assert all(g.min() >= -2 ** (b - 1) and g.max() < 2 ** (b - 1) for b, g in groups)
    # a file at its learned depths (as a run keeps it) is costed as packing would store it
    wide = save_compressed(sc, tmp_path / "learned.sgsc", trim_bit_depths=False).path
    assert sum(b * g.size for b, g in bounds.code_groups(wide)) == \
        sum(b * g.size for b, g in groups)
    assert bounds.main(["--report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 sc files of mnist") and "sc-s0-a.sgsc" in out
    assert "entropy.sgsc" not in out and "at a quarter" in out
    with pytest.raises(SystemExit, match="keeps no sgsc file of mnist"):
        bounds.main(["--report", str(tmp_path), "--method", "sgsc"])
    with pytest.raises(SystemExit, match="not found; pass --report"):
        bounds.main(["--report", str(tmp_path / "nowhere")])
