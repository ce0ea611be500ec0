"""The one-at-a-time sweep and the search race (sgsc.studies)."""

from __future__ import annotations

import json

import pytest

from sgsc import claims, studies, sweep
from sgsc.baselines import cbtpe


def _grids(tmp_path, axes, fixed=None):
    return studies.axis_grids("digits", ["sc", "sgsc"], [0, 1], axes, fixed or {},
                              tmp_path, "cpu")


def test_axis_grids_vary_one_setting_and_share_the_defaults(tmp_path):
    default_gamma = studies.default_value("digits", "gamma")
    grids = _grids(tmp_path, {"gamma": [default_gamma, 0.5], "lambda_pres": [0.25],
                              "init_bits": [8.0]})
    # init_bits=8 is the default: the defaults grid has that run, no grid of its own
    assert list(grids) == ["defaults", "gamma", "lambda_pres"]
    assert grids["gamma"].grid == {"gamma": [0.5]}
    assert grids["lambda_pres"].methods == ["sgsc"]  # sc has no preservation loss
    keys = [s.key for g in grids.values() for s in g.specs() if s.method != "float"]
    assert len(keys) == len(set(keys)) == 2 * 2 + 2 * 2 + 1 * 2  # no run twice


def test_axis_grids_reject_bad_axes(tmp_path):
    with pytest.raises(sweep.GridError, match="unknown setting"):
        _grids(tmp_path, {"gama": [0.1]})
    with pytest.raises(sweep.GridError, match="both an axis and a fixed setting"):
        _grids(tmp_path, {"epochs": [2]}, fixed={"epochs": 3})
    with pytest.raises(sweep.GridError, match="init_bits"):
        _grids(tmp_path, {"init_bits": [0]})


def _history(folder, accuracies):
    folder.mkdir(parents=True)
    rows = [{"epoch": i + 1, "val_accuracy": a, "wall_s": 2.0 * (i + 1)}
            for i, a in enumerate(accuracies)]
    (folder / "history.json").write_text(json.dumps({"history": rows}))
    return folder


def test_epoch_swing(tmp_path):
    run = _history(tmp_path / "a", [0.5, 0.9, 0.7, 0.8])
    assert studies.epoch_swing(run) == pytest.approx((0.4 + 0.2 + 0.1) / 3)
    assert studies.epoch_swing(_history(tmp_path / "b", [0.5])) is None
    assert studies.epoch_swing(None) is None


def _outcome(method, seed, overrides, run_dir, test_acc):
    result = {"method": method, "seed": seed, "test_acc": test_acc, "run_dir": str(run_dir)}
    return {"status": "done", "spec": {"method": method, "overrides": overrides},
            "result": result}


def test_sweep_rows_put_the_defaults_on_every_axis_and_pair_the_spread(tmp_path):
    run = _history(tmp_path / "r", [0.5, 0.6])
    defaults = sweep.SweepReport({
        f"{m}{s}": _outcome(m, s, {}, run, acc)
        for m, s, acc in (("sc", 0, 0.80), ("sc", 1, 0.90), ("sgsc", 0, 0.85),
                          ("sgsc", 1, 0.86))} | {"f": _outcome("float", 0, {}, run, 0.9)})
    gamma = sweep.SweepReport({"g": _outcome("sc", 0, {"gamma": 0.5}, run, 0.7)})
    lam = sweep.SweepReport({"l": _outcome("sgsc", 0, {"lambda_pres": 4.0}, run, 0.8)})
    rows = studies.sweep_rows({"defaults": defaults, "gamma": gamma, "lambda_pres": lam},
                              "digits", ["gamma", "lambda_pres"])
    gamma_default = studies.default_value("digits", "gamma")
    by_axis = {a: [(r["method"], r["value"]) for r in rows if r["axis"] == a]
               for a in ("gamma", "lambda_pres")}
    assert by_axis["gamma"].count(("sc", gamma_default)) == 2 and ("sc", 0.5) in by_axis["gamma"]
    assert {m for m, _ in by_axis["lambda_pres"]} == {"sgsc"}  # sc runs are not on λ's axis
    assert all(r["epoch_swing"] == pytest.approx(0.1) for r in rows)

    spread = {r["setting"]: r for r in claims.paired_spread(rows, "test_acc")}
    row = spread[f"gamma={gamma_default}"]
    assert row["sc_test_acc_std"] == pytest.approx(0.0707107, rel=1e-5)
    assert row["sgsc_test_acc_std"] == pytest.approx(0.0070711, rel=1e-4)
    assert row["sgsc_lower"] and "gamma=0.5" not in spread  # one seed: no spread


def test_best_so_far_counts_time_and_keeps_the_best():
    trials = [{"value": 0.5, "wall_s": 1.0}, {"value": 0.4, "wall_s": 2.0},
              {"value": 0.5, "wall_s": 0.0}, {"value": 0.9, "wall_s": 1.5}]
    curve = studies.best_so_far(trials)
    assert [p["best_value"] for p in curve] == [0.5, 0.5, 0.5, 0.9]
    assert [p["train_s"] for p in curve] == [1.0, 3.0, 3.0, 4.5]
    assert [p["trial"] for p in curve] == [1, 2, 3, 4]


def test_search_objective_penalises_only_the_excess():
    assert cbtpe.objective(0.9, 800, 1000, 1.0) == 0.9
    assert cbtpe.objective(0.9, 1500, 1000, 2.0) == pytest.approx(-0.1)
    assert studies.counted_bytes({"storage_bits_counted": 17}) == 3
    with pytest.raises(ValueError, match="budget_bytes must be positive"):
        cbtpe.objective(0.9, 10, 0, 1.0)


def test_load_search_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="cbtpe run folder"):
        studies.load_search(tmp_path)
