"""Sweeps on Dask: same results as serial runs, recovery from a lost worker, grid errors."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import uuid
from pathlib import Path

import cloudpickle
import dask
import distributed  # noqa: F401  (loads its config defaults before dask.config.set)
import pytest
import torch

from sgsc import cli
from sgsc.experiments import provenance, sweep

# Runners defined here travel to the workers by value (tests/ is not importable there).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

GRID = {"data": "digits", "methods": ["float", "sc", "sgsc"], "seeds": [0],
        "grid": {"gamma": [0.05, 0.1]}, "fixed": {"epochs": 1, "float_epochs": 1},
        "device": "cpu"}
METRICS = ("val_acc", "test_acc", "storage_bytes", "live_weights", "Q", "selected_epoch",
           "preservation_size")


@pytest.fixture(scope="module")
def client():
    """Two single-threaded worker processes; a task whose worker dies fails at once
    (allowed-failures 0) instead of being retried, so a rerun has something to finish."""
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        client = sweep.make_client(workers=2)
    yield client
    sweep.close_client(client)


def _grid(out: Path, **changes) -> sweep.Grid:
    return sweep.parse_grid(GRID | {"out": str(out)} | changes)


def _metrics(result: dict) -> dict:
    return {k: result.get(k) for k in METRICS}


def test_parallel_sweep_matches_serial_runs(client, tmp_path):
    grid = _grid(tmp_path / "parallel")
    report = sweep.run_sweep(grid, client, progress=False)
    specs = grid.specs()
    assert len(specs) == 5 and not report.failed  # 1 float reference + 2 methods x 2 gammas
    threads = torch.get_num_threads()
    torch.set_num_threads(provenance.DEFAULT_THREADS)  # the workers' count: the same numbers
    try:
        serial_runs = {spec.key: sweep.run_spec(spec, str(tmp_path / "serial"), "cpu")
                  for spec in specs}
    finally:
        torch.set_num_threads(threads)
    for spec in specs:
        serial = serial_runs[spec.key]
        stored = json.loads((tmp_path / "parallel/sweep" / f"{spec.key}.json").read_text())
        assert _metrics(stored["result"]) == _metrics(serial), spec.label
    again = sweep.run_sweep(grid, client, progress=False)
    assert again.skipped == len(specs) and len(again.results()) == len(specs)


def _fake(spec: sweep.RunSpec, out: str, device: str, markers: Path, kill: str = "",
          fail: str = "") -> dict:
    """A quick stand-in for a training run: dies (key ``kill``, once) or raises (method
    ``fail``), and leaves one marker file per completed execution."""
    if spec.key == kill and not (markers / "killed").exists():
        (markers / "killed").touch()
        os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies mid-run
    if spec.method == fail:
        raise RuntimeError("boom")
    (markers / f"{spec.key}.{uuid.uuid4().hex}").touch()
    return {"method": spec.method, "seed": spec.seed, "val_acc": 1.0}


def test_killed_worker_loses_only_unfinished_runs_and_rerun_finishes(client, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    grid = _grid(tmp_path / "out", seeds=[0, 1])
    victim = next(s.key for s in grid.specs() if s.method == "sgsc" and s.seed == 1)
    runner = functools.partial(_fake, markers=markers, kill=victim)
    first = sweep.run_sweep(grid, client, runner=runner, progress=False)
    lost = {o["key"] for o in first.failed}  # the victim, and what else its worker held
    # Dask may hand a worker more than one small task at a time, so the victim's worker
    # can take a few unfinished runs with it; the other worker's runs are not lost.
    assert victim in lost and len(lost) < len(first.outcomes)
    assert "KilledWorker" in first.outcomes[victim]["error"]
    assert (tmp_path / "out/sweep" / f"{victim}.failed.json").exists()

    second = sweep.run_sweep(grid, client, runner=runner, progress=False)
    keys = {s.key for s in grid.specs()}
    assert not second.failed and second.skipped == len(keys) - len(lost)
    assert {p.stem for p in (tmp_path / "out/sweep").glob("*.json")} == keys
    executions = [p.name.split(".")[0] for p in markers.iterdir() if p.name != "killed"]
    assert sorted(executions) == sorted(keys)  # every run completed exactly once


def _store_then_die(spec: sweep.RunSpec, out: str, device: str, victim: str) -> dict:
    """Stores its result, then (for ``victim``) dies before the result is gathered."""
    result = {"method": spec.method, "seed": spec.seed, "val_acc": 1.0}
    sweep.record(out, spec, {"key": spec.key, "status": "done", "result": result})
    if spec.key == victim:
        os.kill(os.getpid(), signal.SIGKILL)
    return result


def test_run_stored_before_its_worker_died_counts_as_done(client, tmp_path):
    grid = _grid(tmp_path / "out")
    victim = next(s.key for s in grid.specs() if s.method == "sc")
    runner = functools.partial(_store_then_die, victim=victim)
    report = sweep.run_sweep(grid, client, runner=runner, progress=False)
    assert report.outcomes[victim]["status"] == "done"
    assert not (tmp_path / "out/sweep" / f"{victim}.failed.json").exists()


def test_failed_run_is_recorded_and_others_go_on(client, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    grid = _grid(tmp_path / "out")
    runner = functools.partial(_fake, markers=markers, fail="sc")
    report = sweep.run_sweep(grid, client, runner=runner, progress=False)
    assert len(report.failed) == 2 and len(report.results()) == 3
    for outcome in report.failed:
        stored = json.loads((tmp_path / "out/sweep" / f"{outcome['key']}.failed.json")
                            .read_text())
        assert "RuntimeError: boom" in stored["traceback"]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "message"), [
    ("data: digits\nmethods: [float, nope]\n", "unknown method(s) nope"),
    ("data: digits\nmethods: [sc]\ncolour: red\n", "unknown key(s) colour"),
    ("data: digits\nmethods: [sc]\ngrid: {gama: [0.1]}\n", "unknown setting(s) in 'grid': gama"),
    ("- data\n- digits\n", "must be a mapping"),
    ("data: digits\nmethods: [sc]\ngrid: {gamma: []}\n", "grid.gamma must be a non-empty list"),
    ("data: digits\nmethods: [sc]\ngrid: [gamma]\n", "'grid' must be a mapping"),
    ("data: digits\nmethods: [sc: [\n", "is not valid YAML"),
    ("data: cifar\nmethods: [sc]\n", "unknown data set 'cifar'"),
    ("data: digits\nmethods: [sc]\ngrid: {float_epochs: [1, 2]}\n", "only be in 'fixed'"),
    ("data: digits\nmethods: [sc]\ngrid: {gamma: [0.1, -1]}\n", "gamma=-1"),
    # what a dry-run used to accept: each now fails as the run itself would
    ("data: digits\nmethods: [sc]\nfixed: {float_epochs: -1}\n",
     "float digits s0: invalid training settings: epochs=-1"),
    ("data: digits\nmethods: [sc]\nfixed: {float_epochs: two}\n", "epochs='two'"),
    ("data: digits\nmethods: [sgsc]\nfixed: {preservation_size: -5}\n",
     "preservation_size must be an integer between 1 and the 1257 rows"),
    ("data: digits\nmethods: [sgsc]\ngrid: {preservation_size: [2000]}\n", "got 2000"),
    ("data: digits\nmethods: [sc]\nseeds: [-1]\n", "integers >= 0, got [-1]"),
    ("data: digits\nmethods: [sc]\nfixed: {epochs: 1.5}\n", "epochs=1.5 (an integer >= 1)"),
    ("data: [digits]\nmethods: [sc]\n", "unknown data set ['digits']"),
    ("data: digits\nmethods: [sc]\nout: null\n", "'out' must be a folder path, got None"),
    ("data: digits\nmethods: [sc]\nfixed: {lr_quant: .inf}\n", "lr_quant=inf"),
])
def test_bad_grid_files_say_what_to_fix(tmp_path, text, message):
    with pytest.raises(sweep.GridError, match="grid.yaml") as err:
        sweep.load_grid(_write(tmp_path, text))
    assert message in str(err.value)


def test_missing_grid_file_is_a_clear_cli_error(tmp_path, capsys):
    assert cli.main(["sweep", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml not found" in capsys.readouterr().err


def test_cli_dry_run_lists_float_references_first(tmp_path, capsys):
    path = _write(tmp_path, "data: digits\nmethods: [sc]\nseeds: [0, 1]\n"
                            "grid: {gamma: [0.05, 0.1]}\n")
    assert cli.main(["sweep", str(path), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "6 runs" in out and out.index("float digits s0") < out.index("sc digits s0")


def test_a_grid_of_baselines_and_safety_methods_checks_like_a_run(tmp_path):
    grid = sweep.parse_grid({"data": "digits", "methods": ["uniform-ptq-4", "sc-feedback"],
                             "seeds": [0], "grid": {"gamma": [0.1]}, "out": str(tmp_path)})
    assert {s.method for s in grid.specs()} == {"float", "uniform-ptq-4", "sc-feedback"}
    assert [s.preservation_size for s in grid.specs() if s.method == "sc-feedback"] == [None]
