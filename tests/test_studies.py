"""The one-at-a-time sweep and the search race (sgsc.experiments.studies)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sgsc.experiments import studies, sweep
from sgsc.experiments.baselines import cbtpe


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
    result = {"method": method, "seed": seed, "test_acc": test_acc, "run_dir": str(run_dir),
              "train_s": 2.0, "train_flops": 3e9}
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
    assert {(r["train_s"], r["train_flops"]) for r in rows} == {(2.0, 3e9)}  # for the cost

    spread = {r["setting"]: r for r in studies.paired_spread(rows, "test_acc")}
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


# ----------------------------------------------------------------------------- safety study


def _row(method, seed, gamma, acc, size, **kw):
    """A row as studies.study_rows makes it, from a result with these params."""
    from sgsc.experiments import runs

    config = runs.train_config(method, "digits")
    params = {"gamma": gamma, "l1_weights": kw.get("l1_weights", config.l1_weights),
              "pres_bn": kw.get("pres_bn", config.pres_bn)}
    result = {"method": method, "seed": seed, "params": params, "val_acc": acc,
              "test_acc": acc, "storage_bytes": size, "feedback_events": kw.get("events", 0),
              "feedback_bits": 0, "feedback_monitor_change": kw.get("change"),
              "run_dir": f"{method}-{seed}-{gamma}-{params['l1_weights']}"}
    per_class = [{"run_dir": result["run_dir"], "class_0": acc - 0.1, "class_1": acc}]
    [row] = studies.study_rows([result], per_class, "digits")
    return row


def test_image_study_lists_the_ablation_frontier_and_tuning_runs():
    from sgsc.experiments import profiles

    paper = profiles.PROFILES["paper"]
    parts = studies.image_study(paper)
    assert parts["ablation"] == [{"methods": ["sc-pres", "sc-feedback"], "seeds": [0, 1, 2],
                                  "overrides": {}}]
    assert [(r["methods"], r["overrides"]["gamma"]) for r in parts["frontier"]] == [
        ([method], gamma) for method, gammas in paper.frontier.items() for gamma in gammas]
    assert [next(iter(r["overrides"].items())) for r in parts["tuning"]] == [
        ("l1_weights", 0.0)]
    assert [r["seeds"] for r in parts["tuning"]] == [[0]]
    full = profiles.PROFILES["full"]
    # with the default: five gammas or more for sc and sgsc
    assert all(len(full.frontier[m]) + 1 >= 5 for m in ("sc", "sgsc"))
    tried = studies.image_study(full)["tuning"]
    assert {next(iter(r["overrides"].items())) for r in tried} == {
        ("l1_weights", 0.0), ("l1_weights", 1.0), ("pres_bn", "frozen")}
    assert all(r["seeds"] == list(full.seeds) for r in tried)


def test_study_rows_mark_the_default_gamma_of_every_method_that_weighs_one():
    g0 = studies.default_value("digits", "gamma")
    marked = {(m, g): _row(m, 0, g, 0.9, 1000)["default_gamma"]
              for m, g in [("sc", g0), ("sc", 0.5), ("diffq", g0), ("diffq", 0.5),
                           ("uniform-qat-4", 0.5), ("float", None)]}
    assert marked == {("sc", g0): True, ("sc", 0.5): False, ("diffq", g0): True,
                      ("diffq", 0.5): False, ("uniform-qat-4", 0.5): True,
                      ("float", None): True}  # QAT and float have no gamma of their own


def test_study_grids_hold_the_same_runs_as_the_notebook(tmp_path):
    from sgsc.experiments import profiles

    quick = profiles.PROFILES["quick"]
    parts = studies.image_study(quick)
    grids = studies.study_grids(parts, "digits", tmp_path, profiles.budget(quick), "cpu")
    specs = {(s.method, s.seed, s.overrides) for g in grids for s in g.specs()
             if s.method != "float"}
    expected = {(m, seed, tuple(sorted(({"epochs": quick.epochs} | r["overrides"]).items())))
                for part in parts.values() for r in part for m in r["methods"]
                for seed in r["seeds"]}
    assert specs == expected


def test_ablation_summary_averages_each_variant_at_the_default_gamma():
    g0 = studies.default_value("digits", "gamma")
    rows = [_row("sc", s, g0, 0.90 + 0.01 * s, 1000) for s in range(3)]
    rows += [_row("sgsc", s, g0, 0.92, 1200, events=2, change=-0.1) for s in range(3)]
    rows += [_row("sgsc", 0, g0, 0.5, 900, l1_weights=0.0)]  # a tuning run: left out
    rows += [_row("sc", 0, 0.5, 0.7, 500)]  # another gamma: left out
    summary = {r["method"]: r for r in studies.ablation_summary(rows, "digits")}
    assert set(summary) == {"sc", "sgsc"}
    assert summary["sc"]["test_acc"] == pytest.approx(0.91)
    assert summary["sc"]["test_acc_std"] == pytest.approx(0.01)
    assert summary["sgsc"]["seeds"] == 3 and summary["sgsc"]["storage_bytes"] == 1200
    assert summary["sgsc"]["feedback_monitor_change"] == pytest.approx(-0.1)


def test_matched_size_compares_with_sc_at_the_same_size_and_seed():
    g0 = studies.default_value("digits", "gamma")
    rows = []
    for seed in range(3):
        rows += [_row("sc", seed, 0.5, 0.90, 1000), _row("sc", seed, g0, 0.98, 4000)]
        rows += [_row("sgsc", seed, g0, 0.95 + 0.001 * seed, 2000)]  # sc there: 0.94
    [acc, worst] = studies.matched_size(rows, "digits", ["sgsc"])
    assert acc["metric"] == "test_acc" and worst["metric"] == "worst_class_acc"
    assert acc["matched"] == 3 and acc["difference"] == pytest.approx(0.011)
    assert acc["ci_low"] > 0 and acc["verdict"] == "supported"


def test_matched_size_of_a_loss_counts_lower_as_better():
    """The text frontier: results with a test loss and no per-class rows."""
    from sgsc.experiments import runs

    g0 = studies.default_value("names", "gamma")
    results = []
    for seed in range(3):
        for method, gamma, loss, size in (("sc", 1.0, 2.2, 1000), ("sc", g0, 2.0, 4000),
                                          ("sgsc", 0.3, 2.05 + 0.001 * seed, 2000)):
            results.append({"method": method, "seed": seed, "test_loss": loss,
                            "storage_bytes": size, "params": dataclasses.asdict(
                                runs.train_config(method, "names", gamma=gamma)),
                            "run_dir": f"{method}-{seed}-{gamma}"})
    rows = studies.study_rows(results, [], "names")
    assert {r["test_loss"] for r in rows if r["method"] == "sc"} == {2.2, 2.0}
    [loss] = studies.matched_size(rows, "names", ["sgsc"], metrics=("test_loss",),
                                  better="below")
    # sc at 2,000 B of a 1,000-4,000 B frontier, linear in log size: 2.1
    assert loss["matched"] == 3 and loss["difference"] == pytest.approx(-0.049)
    assert loss["ci_high"] < 0 and loss["verdict"] == "supported"


def test_text_study_lists_each_methods_gammas_on_the_text_seeds():
    from sgsc.experiments import profiles

    full = profiles.PROFILES["full"]
    parts = studies.text_study(full)["frontier"]
    assert [(r["methods"], r["overrides"]["gamma"]) for r in parts] == [
        ([m], g) for m, gammas in full.text_frontier.items() for g in gammas]
    assert all(r["seeds"] == list(full.text_seeds) for r in parts)
    # with the default gamma, four or more for each
    assert all(len(full.text_frontier[m]) + 1 >= 4 for m in ("sc", "sgsc"))


def test_tuning_rows_choose_on_validation_only():
    g0 = studies.default_value("digits", "gamma")
    rows = [_row("sgsc", s, g0, 0.90, 1000) for s in range(2)]
    rows += [_row("sgsc", s, g0, 0.95, 1100, l1_weights=0.0) for s in range(2)]
    for r in rows:
        r["test_acc"] = 1.0 - r["val_acc"]  # a test set that disagrees must not matter
    table = studies.tuning_rows(rows, "digits", {"l1_weights": (0.0,)})
    assert [(r["value"], r["default"], r["best"]) for r in table] == [
        (studies.default_value("digits", "l1_weights"), True, False), (0.0, False, True)]
    assert all("test_acc" not in r for r in table)


def test_tuning_verdicts_say_what_validation_prefers():
    g0 = studies.default_value("digits", "gamma")
    l1 = studies.default_value("digits", "l1_weights")
    rows = [_row("sgsc", 0, g0, 0.90, 1000), _row("sgsc", 0, g0, 0.92, 1000, l1_weights=0.0)]
    [line] = studies.tuning_verdicts(studies.tuning_rows(rows, "digits",
                                                         {"l1_weights": (0.0,)}))
    assert line == (f"l1_weights: validation prefers 0.0 over the default {l1!r} "
                    f"({l1!r}: 0.9000, 0.0: 0.9200; 1 seed(s))")
    rows[1]["val_acc"] = 0.80
    [line] = studies.tuning_verdicts(studies.tuning_rows(rows, "digits",
                                                         {"l1_weights": (0.0,)}))
    assert line.startswith(f"l1_weights: validation keeps the default {l1!r}")


def test_tuning_rows_compare_values_on_the_seeds_they_share():
    g0 = studies.default_value("digits", "gamma")
    # the default ran seeds 0-2 (seeds 1 and 2 lucky), the tried value only seed 0
    rows = [_row("sgsc", 0, g0, 0.90, 1000), _row("sgsc", 1, g0, 0.99, 1000),
            _row("sgsc", 2, g0, 0.99, 1000), _row("sgsc", 0, g0, 0.92, 1000, l1_weights=0.0)]
    table = studies.tuning_rows(rows, "digits", {"l1_weights": (0.0,)})
    assert [(r["value"], r["seeds"], r["val_acc"], r["best"]) for r in table] == [
        (studies.default_value("digits", "l1_weights"), 1, 0.90, False), (0.0, 1, 0.92, True)]
    # seeds that no two values share: nothing to compare
    rows[-1]["seed"] = 7
    assert studies.tuning_rows(rows[:1] + rows[-1:], "digits", {"l1_weights": (0.0,)}) == []


def test_file_variants_write_each_encoding_and_measure_the_reloaded_model(tmp_path,
                                                                         stored_run):
    from sgsc.experiments import harness
    from sgsc.fileformat.export import byte_budget

    result = stored_run | {"params": {"gamma": 0.1, "epochs": 6}}
    rows = studies.file_variants([result], harness.load_splits("digits"), tmp_path / "files")
    by_variant = {r["variant"]: r for r in rows}
    assert list(by_variant) == list(studies.FILE_VARIANTS)
    packed = by_variant["packed"]
    assert packed["file_bytes"] == result["storage_bytes"]
    assert packed["test_acc"] == result["test_acc"]  # the run's own file, reloaded
    assert by_variant["entropy"]["test_acc"] == packed["test_acc"]  # lossless
    # a file at a lower precision is judged against the exact file of its coding, both
    # reloaded here
    for lower, exact in (("grid", "packed"), ("grid+entropy", "entropy"),
                         ("narrow", "packed"), ("narrow+entropy", "entropy")):
        assert by_variant[lower]["same_accuracy"] == (
            by_variant[lower]["test_acc"] == by_variant[exact]["test_acc"])
    assert by_variant["entropy"]["file_bytes"] < packed["file_bytes"]
    # each step down in precision is smaller: exponents on a grid, then float16 tensors
    assert by_variant["narrow+entropy"]["file_bytes"] < by_variant["grid+entropy"][
        "file_bytes"] < by_variant["entropy"]["file_bytes"]
    assert by_variant["narrow"]["file_bytes"] < by_variant["grid"]["file_bytes"] < \
        packed["file_bytes"]
    for variant, row in by_variant.items():
        written = tmp_path / "files" / f"sc-s0-abc.{variant}.sgsc"
        assert written.stat().st_size == row["file_bytes"]
    budget = byte_budget(tmp_path / "files" / "sc-s0-abc.packed.sgsc")
    assert packed["entropy_floor_bytes"] <= budget["file_bytes"]
    # each row's floor is its precision's: a narrowed file's floor narrows its floats too
    floors = {v: r["entropy_floor_bytes"] for v, r in by_variant.items()}
    assert floors["entropy"] == floors["packed"] > floors["grid"] == floors["grid+entropy"] \
        > floors["narrow"] == floors["narrow+entropy"]
    assert {r["gamma"] for r in rows} == {0.1} and {r["epochs"] for r in rows} == {6}


def test_file_variants_are_reopened_not_encoded_again_until_the_packed_file_changes(
        tmp_path, stored_run, monkeypatch):
    """A report rebuilt from cached runs reuses each run's variant rows (nothing is encoded
    or evaluated again); a run whose packed file changed is measured afresh."""
    import shutil

    from sgsc.experiments import harness
    from sgsc.fileformat import export

    run_dir = tmp_path / "run"
    shutil.copytree(stored_run["run_dir"], run_dir)
    result = stored_run | {"run_dir": str(run_dir), "params": {"gamma": 0.1, "epochs": 6}}
    splits, folder = harness.load_splits("digits"), tmp_path / "files"
    first = studies.file_variants([result], splits, folder)
    encoded = []
    real_save = export.save_compressed
    monkeypatch.setattr(export, "save_compressed",
                        lambda *a, **kw: encoded.append(1) or real_save(*a, **kw))
    assert studies.file_variants([result], splits, folder) == first and encoded == []
    packed = run_dir / "model.sgsc"
    export.save_compressed(export.reopen_compressed(packed), packed, coding="entropy")
    encoded.clear()
    # measured afresh -- and, the model inside being the same, to the same rows
    assert studies.file_variants([result], splits, folder) == first
    assert len(encoded) == len(studies.FILE_VARIANTS)
    # an encoder that writes other bytes for the same model makes the rows stale too
    encoded.clear()
    monkeypatch.setattr(export, "ENCODER_REVISION", export.ENCODER_REVISION + 1)
    studies.file_variants([result], splits, folder)
    assert len(encoded) == len(studies.FILE_VARIANTS)


def test_file_variants_encode_without_the_empty_rows_a_runs_own_file_keeps(tmp_path,
                                                                          stored_run):
    """A run's file keeps its empty rows and its learned depths (harness.RUN_ENCODING);
    07's encodings remove the rows and trim the depths, and the model reloaded from each
    still scores the run's test accuracy."""
    import shutil

    import torch

    from sgsc.core.tasks import evaluate
    from sgsc.experiments import harness
    from sgsc.fileformat import export

    run_dir = tmp_path / "run"
    shutil.copytree(stored_run["run_dir"], run_dir)
    sc = export.reopen_compressed(run_dir / "model.sgsc")
    with torch.no_grad():  # two channels of conv3 with bits but all-zero weights
        sc.bit_depths()["conv3"][[0, 1]] = 3.0
        sc.raw_weights()["conv3"][[0, 1]] = 0.0
        learned_fc = sc.bit_depths()["fc"].ceil().tolist()
        sc.bit_depths()["fc"].add_(4.0)  # and fc's rows 4 bits wider than their codes
    own = export.save_compressed(sc, run_dir / "model.sgsc", **harness.RUN_ENCODING)
    splits = harness.load_splits("digits")
    accuracy = evaluate(export.load_compressed(own.path), splits.test,
                        torch.device("cpu"))["accuracy"]
    result = stored_run | {"run_dir": str(run_dir), "storage_bytes": own.file_bytes,
                           "test_acc": accuracy, "params": {"gamma": 0.1, "epochs": 6}}
    rows = {r["variant"]: r for r in studies.file_variants([result], splits, tmp_path / "f")}
    packed = export.read_metadata(tmp_path / "f" / "run.packed.sgsc")
    conv3 = next(shape for key, _, _, shape in packed["tensors"] if key == "conv3.weight")
    assert conv3[0] == sc.raw_weights()["conv3"].shape[0] - 2  # the empty rows are gone
    fc = export.byte_budget(tmp_path / "f" / "run.packed.sgsc")["layers"][-1]
    assert fc["layer"] == "fc" and all(  # every row back at most at its depth before
        trimmed <= before for trimmed, before in zip(fc["bits"], learned_fc, strict=True))
    assert rows["packed"]["file_bytes"] < own.file_bytes
    assert all(r["test_acc"] == accuracy for r in rows.values() if r["variant"] in (
        "packed", "entropy"))


def test_smallest_at_picks_per_encoding_the_smallest_mean_file_that_reaches_the_target():
    def rows(gamma, variant, sizes, accs, same=True):
        return [{"method": "sc", "epochs": 6, "gamma": gamma, "variant": variant, "seed": s,
                 "file_bytes": size, "test_acc": acc, "entropy_floor_bytes": size * 0.8,
                 "same_accuracy": same}
                for s, (size, acc) in enumerate(zip(sizes, accs, strict=True))]

    table = studies.smallest_at(
        rows(0.1, "packed", [3000, 3100], [0.991, 0.990])
        + rows(0.3, "packed", [2000, 2100], [0.991, 0.987])  # mean 0.989: misses
        + rows(0.05, "packed", [4000, 4000], [0.995, 0.995])
        + rows(0.3, "narrow", [1500, 1500], [0.995, 0.995], same=False)
        + rows(0.3, "grid", [1800, 1800], [0.995, 0.995], same=False)
        + rows(0.3, "grid+entropy", [1200, 1200], [0.995, 0.995], same=False)
        + rows(0.1, "grid+entropy", [1300, 1300], [0.991, 0.991]), target=0.99)
    packed = {r["gamma"]: r for r in table if r["variant"] == "packed"}
    assert packed[0.1]["file_bytes_mean"] == 3050 and packed[0.1]["seeds"] == 2
    # the seeds' t interval of the mean: 0.9905 +- t(0.975, 1) * 0.000707 / sqrt(2)
    assert packed[0.1]["test_acc_ci_low"] == pytest.approx(0.9905 - 12.706 * 0.0005, abs=1e-5)
    assert packed[0.1]["test_acc_ci_high"] == pytest.approx(0.9905 + 12.706 * 0.0005, abs=1e-5)
    assert [g for g, r in packed.items() if r["smallest_at_target"]] == [0.1]
    assert not packed[0.3]["reaches_target"] and packed[0.05]["reaches_target"]
    # the target is on the mean: how many seeds reach it on their own is counted
    assert packed[0.3]["seeds_at_target"] == 1 and packed[0.1]["seeds_at_target"] == 2
    [narrow] = [r for r in table if r["variant"] == "narrow"]
    # a narrowed file that classifies differently from its exact one does not count
    assert not narrow["allowed"] and not narrow["smallest_at_target"]
    # nor does one with its exponents on the grid, packed or entropy coded; where every
    # seed's accuracy is unchanged, it does
    grid = {(r["gamma"], r["variant"]): r for r in table if r["variant"].startswith("grid")}
    assert not grid[0.3, "grid"]["allowed"] and not grid[0.3, "grid+entropy"]["allowed"]
    assert grid[0.1, "grid+entropy"]["smallest_at_target"]
    with pytest.raises(KeyError):
        studies.exact_precision("halved")


def test_smallest_at_leaves_out_a_model_missing_seeds_and_counts_an_exact_99_mean():
    def rows(gamma, accs, sizes):
        return [{"method": "sc", "epochs": 6, "gamma": gamma, "variant": "packed", "seed": s,
                 "file_bytes": size, "test_acc": acc, "entropy_floor_bytes": size,
                 "same_accuracy": True}
                for s, (acc, size) in enumerate(zip(accs, sizes, strict=True))]

    # 9,895 + 9,901 + 9,904 of 10,000 images: a mean of exactly 99.00 %, which the mean
    # of the three floats misses by rounding
    correct = [9895, 9901, 9904]
    assert sum(correct) == 3 * 9900 and sum(c / 10_000 for c in correct) / 3 != 0.99
    exact = rows(0.1, [c / 10_000 for c in correct], [3000, 3000, 3000])
    partial = rows(0.3, [0.995, 0.995], [1000, 1000])  # one seed's run not finished
    table = {r["gamma"]: r for r in studies.smallest_at(exact + partial, 0.99, seeds=3)}
    assert table[0.1]["reaches_target"] and table[0.1]["smallest_at_target"]
    assert table[0.1]["seeds_at_target"] == 2
    assert not table[0.3]["complete"] and not table[0.3]["reaches_target"]
    assert not table[0.3]["smallest_at_target"]


def test_coder_savings_set_each_models_coded_file_and_floor_against_its_packed_file():
    def model(method, run, packed, coded, floor, narrow=None):
        rows = [{"method": method, "run_dir": run, "variant": "packed", "file_bytes": packed,
                 "entropy_floor_bytes": floor},
                {"method": method, "run_dir": run, "variant": "entropy", "file_bytes": coded,
                 "entropy_floor_bytes": floor}]
        if narrow:  # narrowed encodings are another precision: not counted here
            rows.append({"method": method, "run_dir": run, "variant": "narrow+entropy",
                         "file_bytes": narrow, "entropy_floor_bytes": narrow})
        return rows

    table = studies.coder_savings(
        model("sc", "a", 1000, 900, 850, narrow=100) + model("sc", "b", 2000, 1600, 1400)
        + model("sc-rate", "c", 10000, 2000, 2500)
        + [{"method": "sc", "run_dir": "d", "variant": "packed", "file_bytes": 500,
            "entropy_floor_bytes": 400}])  # no coded file: no pair to compare
    by = {r["method"]: r for r in table}
    sc = by["sc"]
    assert sc["models"] == 2 and sc["coded_saving_min"] == pytest.approx(0.1)
    assert sc["coded_saving_max"] == pytest.approx(0.2)
    assert sc["floor_saving_mean"] == pytest.approx((0.15 + 0.3) / 2)
    assert (sc["coded_at_target"], sc["floor_at_target"]) == (0, 1)
    # a coder fitted per row can go below the floor: the two are reported side by side
    rate = by["sc-rate"]
    assert rate["coded_saving_mean"] == pytest.approx(0.8)
    assert rate["floor_saving_mean"] == pytest.approx(0.75)
    assert (rate["coded_at_target"], rate["floor_at_target"]) == (1, 1)


def test_budget_rows_set_each_longer_budget_beside_the_same_gamma_at_the_study_budget():
    def rows(epochs, sizes, accs, narrowed_same=True):
        return [{"method": "sc", "epochs": epochs, "gamma": 0.15, "variant": variant,
                 "seed": s, "file_bytes": size * scale, "test_acc": acc,
                 "entropy_floor_bytes": size * 0.8,
                 "same_accuracy": narrowed_same or not variant.startswith("narrow")}
                for variant, scale in (("packed", 1.0), ("entropy", 0.9),
                                       ("narrow+entropy", 0.8))
                for s, (size, acc) in enumerate(zip(sizes, accs, strict=True))]

    smallest = studies.smallest_at(rows(6, [3000, 2800], [0.989, 0.988])
                                   + rows(18, [2000, 2200], [0.991, 0.989],
                                          narrowed_same=False), target=0.99)
    models = [{"method": "sc", "seed": s, "val_acc": acc,
               "params": {"gamma": 0.15, "epochs": epochs}}
              for epochs, accs in ((6, (0.98, 0.982)), (18, (0.984, 0.986)))
              for s, acc in enumerate(accs)]
    models.append({"method": "sc", "seed": 0, "val_acc": 0.5, "params": {"gamma": 0.4,
                                                                          "epochs": 6}})
    long = ({"epochs": 18, "gammas": {"sc": (0.15,)}},)
    table = studies.budget_rows(smallest, models, long)
    assert [(r["epochs"], r["seeds"]) for r in table] == [(6, 2), (18, 2)]
    six, eighteen = table
    assert eighteen["packed_bytes_mean"] == 2100
    # the smallest coding that counts: at 18 epochs narrowing changed an answer
    assert (six["coding"], six["coded_bytes_mean"]) == ("narrow+entropy", 2320)
    assert (eighteen["coding"], eighteen["coded_bytes_mean"]) == ("entropy", 1890)
    assert six["val_acc_mean"] == pytest.approx(0.981)  # gamma 0.4's run is not averaged in
    assert eighteen["test_acc_mean"] == pytest.approx(0.99)
    assert eighteen["seeds_at_target"] == 1 and six["seeds_at_target"] == 0
    assert six["complete"] and eighteen["complete"]
    # with three seeds asked for, a budget of two is not complete
    assert not any(r["complete"] for r in studies.budget_rows(
        studies.smallest_at(rows(6, [3000, 2800], [0.989, 0.988]), 0.99, seeds=3),
        models, long))


def test_the_operating_point_runs_sc_and_sgsc_from_a_brief_float_and_compares_with_it():
    point = {"data": "mnist", "seeds": (0, 1), "float_epochs": 1, "init_bits": 20.0,
             "gamma": 0.0}
    requests = studies.operating_point_requests(point)
    assert [(r["method"], r["seed"]) for r in requests] == [
        ("float", 0), ("sc", 0), ("sgsc", 0), ("float", 1), ("sc", 1), ("sgsc", 1)]
    assert requests[1]["overrides"] == {"init_bits": 20.0, "gamma": 0.0}
    results = [{"method": m, "seed": 0, "val_acc": 0.98, "test_acc": acc,
                "storage_bytes": size, "run_dir": m}
               for m, acc, size in (("float", 0.986, 1000), ("sgsc", 0.994, 620))]
    rows = {r["method"]: r for r in studies.operating_point_rows(results)}
    assert rows["sgsc"]["float_fraction"] == pytest.approx(0.62)
    assert rows["sgsc"]["test_acc_minus_float"] == pytest.approx(0.008)


def test_the_transformer_point_compares_test_loss_and_builds_its_model_in_every_run():
    model = {"n_layer": 1, "n_embd": 32, "n_head": 2}
    point = {"data": "names", "seeds": (0,), "init_bits": 20.0, "gamma": 0.0, "model": model}
    requests = studies.operating_point_requests(point)
    assert all(r["model"] == model for r in requests)
    assert studies.operating_point_budget(point) == {"float_epochs": None, "epochs": None}
    results = [{"method": m, "seed": 0, "val_loss": 2.0, "test_loss": loss,
                "storage_bytes": size, "run_dir": m}
               for m, loss, size in (("float", 2.00, 1000), ("sgsc", 1.95, 620))]
    rows = {r["method"]: r for r in studies.operating_point_rows(results, metric="test_loss")}
    assert rows["sgsc"]["test_loss_minus_float"] == pytest.approx(-0.05)
    assert rows["sgsc"]["val_loss"] == 2.0 and "test_acc" not in rows["sgsc"]


def test_kept_encodings_are_the_files_verify_re_measures(tmp_path, stored_run):
    """Every seed's file of a picked encoding lands in the report with its size and
    accuracy; verify reloads each and finds both again."""
    from sgsc.experiments import harness, store

    result = stored_run | {"params": {"gamma": 0.1, "epochs": 6}}
    folder, report = tmp_path / "files", tmp_path / "report"
    variants = studies.file_variants([result], harness.load_splits("digits"), folder)
    picked = [r for r in studies.smallest_at(variants, target=0.0)
              if r["variant"] == "narrow+entropy"]
    kept = studies.keep_encodings(variants, picked, folder, report, "digits")
    assert [r["file"] for r in kept] == ["digits/sc-s0-abc.narrow+entropy.sgsc"]
    coded = next(r for r in variants if r["variant"] == "narrow+entropy")
    assert kept[0]["storage_bytes"] == coded["file_bytes"] == (
        report / store.MODELS / kept[0]["file"]).stat().st_size
    checked = list(store.verify_models(report))
    assert [r["file"] for r in checked] == [kept[0]["file"]] and checked[0]["ok"]
