"""The papers' claims at their own terms: measured per seed, with intervals and verdicts."""

from __future__ import annotations

import pytest

from sgsc.experiments import studies
from sgsc.reporting import claims, report


def _image(method, seed, acc, size, weights=1000, entropy=None):
    return {"method": method, "data": "mnist", "seed": seed, "test_acc": acc,
            "storage_bytes": size, "live_weights": weights,
            "entropy_coded_bytes": entropy or size, "run_dir": f"{method}{seed}"}


def _study(method, seed, gamma, acc, size, *, tuning=False, default=True, change=None,
           worst=None):
    return {"method": method, "seed": seed, "gamma": gamma, "test_acc": acc,
            "worst_class_acc": worst if worst is not None else acc - 0.1,
            "storage_bytes": size, "tuning": tuning, "default_gamma": default,
            "feedback_monitor_change": change, "run_dir": f"{method}{seed}-{gamma}"}


@pytest.fixture
def tables():
    image = [_image("float", s, 0.990 + 0.001 * s, 350_000, 88_000) for s in range(3)]
    image += [_image("sc", s, 0.988 + 0.001 * s, 6_000 + 100 * s, 9_000) for s in range(3)]
    image += [_image("uniform-ptq-16", s, 0.990 + 0.001 * s, 176_000) for s in range(3)]
    study = []
    for s in range(3):
        study += [_study("sc", s, 0.5, 0.95, 1_000, default=False),
                  _study("sc", s, 0.05, 0.99, 4_000)]
        study += [_study("sgsc", s, 0.05, 0.975 + 0.002 * s, 2_000, change=-0.021 + 0.001 * s)]
        study += [_study("sgsc", s, 0.05, 0.5, 2_000, tuning=True, change=5.0)]  # left out
    text = [{"method": m, "seed": s, "test_loss": loss + 0.001 * s}
            for s in range(3) for m, loss in (("float", 2.0), ("sgsc", 2.01))]
    search = [{"method": m, "seed": s, "storage_bytes": size, "test_acc": 0.96,
               "search_s": t} for s in range(3)
              for m, size, t in (("cbtpe", 2_000 + 50 * s, 10.0), ("cbtpe-tpe", 3_000, 11.0))]
    regime = [{"regime": name, "method": "sgsc", "seed": s, "gamma": g,
               "feedback_attempt_val_change": change + 0.001 * s}
              for name, change in (("digits", -0.03), ("mnist", 0.01)) for s in range(3)
              for g in (0.05, 0.15)]
    study += [_study("sc-feedback", s, 0.05, 0.97, 2_000) for s in range(3)]
    return {"image_runs": image, "study_runs": study, "text_runs": text,
            "search_runs": search, "regime_runs": regime}


def test_every_claim_gets_n_an_interval_and_a_verdict(tables):
    rows = {r["id"]: r for r in claims.assess_claims(tables)}
    assert set(rows) == {c.id for c in claims.CLAIMS}
    for row in rows.values():
        assert row["verdict"] in claims.VERDICTS and row["quote"] and row["source"]
        if row["n"] > 1:
            assert row["ci_low"] <= row["mean"] <= row["ci_high"]


def test_measurements_pair_seeds_and_leave_out_tuning_runs(tables):
    rows = {r["id"]: r for r in claims.assess_claims(tables)}
    # sgsc at 2 KB against sc's frontier at the same size: 0.97 there on every seed
    assert rows["sgsc-vs-sc-matched"]["n"] == 3
    assert rows["sgsc-vs-sc-matched"]["mean"] == pytest.approx(0.977 - 0.97, abs=1e-9)
    assert rows["sc-feedback-vs-sc-matched"]["mean"] == pytest.approx(0.0, abs=1e-9)
    # the feedback: every attempt's validation change, per regime and seed (both gammas)
    assert rows["sgsc-feedback"]["n"] == 6
    assert rows["sgsc-feedback"]["mean"] == pytest.approx((-0.03 + 0.01) / 2 + 0.001)
    assert rows["sgsc-text-loss"]["mean"] == pytest.approx(0.01)  # the loss rose
    assert rows["sgsc-text-loss"]["verdict"] == "refuted"
    assert rows["scnn-bits"]["mean"] == pytest.approx((6_000 + 6_100 + 6_200) / 3 / 350_000)
    assert rows["scnn-bits"]["verdict"] == "supported"
    assert rows["ptq16-vs-float"]["mean"] == pytest.approx(0.0)
    assert rows["cbtpe-faster"]["mean"] == pytest.approx(1.1)
    assert rows["cbtpe-faster"]["verdict"] == "refuted"


def test_verdicts_are_holm_corrected_across_the_claims(tables):
    """sgsc's matched-size gain is significant alone (p < 0.05) but not after Holm's
    correction over every claim of the table: inconclusive, and its p says why."""
    rows = {r["id"]: r for r in claims.assess_claims(tables)}
    matched = rows["sgsc-vs-sc-matched"]
    assert matched["ci_low"] > 0 and matched["p"] < 0.05 <= matched["holm_p"]
    assert matched["verdict"] == "inconclusive"
    measured = [r for r in rows.values() if r["p"] is not None]
    ranked = sorted(measured, key=lambda r: r["p"])
    assert ranked[0]["holm_p"] == pytest.approx(min(1.0, ranked[0]["p"] * len(measured)))
    for row in rows.values():
        if row["verdict"] in ("supported", "refuted"):
            assert row["holm_p"] < 0.05


def test_each_row_says_where_the_paper_measured_and_where_we_did(tables):
    rows = {r["id"]: r for r in claims.assess_claims(tables)}
    sixty = rows["ptq16-vs-float"]
    assert "60 %" in sixty["operating_point"] and "not sgsc" in sixty["measurement"]
    assert sixty["size_fraction"] == pytest.approx(176_000 / 350_000)
    assert sixty["at_operating_point"] == "yes"  # 50 % against the paper's 60 %
    assert rows["sgsc-accuracy-vs-float"]["at_operating_point"] is None  # no sgsc run in 01
    bits = rows["scnn-bits"]
    assert bits["paper_fraction"] == 0.03 and bits["at_operating_point"] == "yes"
    assert "Optuna" in rows["cbtpe-faster"]["measurement"]


def test_only_an_inconclusive_claim_says_how_many_seeds_would_decide(tables):
    """From the claim's stated smallest effect and the observed spread, never the observed
    mean; a decided row leaves it blank."""
    from sgsc.reporting import compare

    tables["image_runs"] = [r | {"test_acc": r["test_acc"] + (0.004 if r["seed"] == 1 else 0)}
                            if r["method"] == "sc" else r for r in tables["image_runs"]]
    rows = {r["id"]: r for r in claims.assess_claims(tables)}
    row = rows["scnn-accuracy"]
    assert row["verdict"] == "inconclusive"
    assert row["seeds_to_resolve"] == compare.seeds_for_power(row["std"], 0.005)
    assert row["smallest_effect"] == 0.005
    assert all(r["seeds_to_resolve"] is None for r in rows.values()
               if r["verdict"] in ("supported", "refuted"))


def test_missing_tables_are_not_measured():
    rows = claims.assess_claims({})
    assert all(r["verdict"] == "not measured" and r["n"] == 0 for r in rows)


def test_size_at_accuracy_picks_the_smallest_method_reaching_the_target():
    rows = [{"method": m, "seed": s, "test_acc": a, "storage_bytes": b}
            for m, s, a, b in (("float", 0, 0.995, 350000), ("float", 1, 0.993, 350000),
                               ("sc", 0, 0.992, 6000), ("sc", 1, 0.985, 7000),
                               ("sgsc", 0, 0.991, 9000), ("sgsc", 1, 0.990, 11000))]
    table = {r["method"]: r for r in claims.size_at_accuracy(rows, 0.99)}
    assert not table["sc"]["reaches_target"]  # mean 0.9885
    assert table["sgsc"]["reaches_target"] and table["sgsc"]["smallest_at_target"]
    assert table["sgsc"]["storage_bytes_mean"] == 10000
    assert not any(r["smallest_at_target"] for r in claims.size_at_accuracy(rows, 0.999))


def test_project_targets_are_the_developers_guides():
    image = [_image("sc", s, 0.991, 2_900, entropy=1_400) for s in range(3)]
    image += [_image("sgsc", s, 0.995, 3_100, entropy=1_400) for s in range(3)]
    text = [{"method": "sc", "data": "names", "seed": 0, "test_loss_rise": 0.01,
             "compression": 25.0},
            {"method": "sgsc", "data": "names", "seed": 0, "test_loss_rise": 0.01,
             "compression": 12.5}]
    rows = {(r["data"], r["method"]): r
            for r in claims.project_targets({"image_runs": image, "text_runs": text})}
    assert rows[("mnist", "sc")]["met"] and rows[("mnist", "sc")]["storage_bytes_std"] == 0
    assert not rows[("mnist", "sgsc")]["met"]  # 3,100 bytes > 3,000
    assert rows[("names", "sc")]["met"]  # 4 % of the float size
    assert not rows[("names", "sgsc")]["met"]  # 8 %
    assert claims.project_targets({}) == []


def test_compute_cost_counts_each_run_once_over_every_table_of_a_notebook():
    main = [{"run_dir": "names/float-s0", "train_s": 10.0},
            {"run_dir": "names/sc-s0", "train_s": 20.0}]
    # the frontier table repeats the main runs and adds sc at another gamma
    frontier = main + [{"run_dir": "names/sc-s0-other", "train_s": 30.0}]
    tables = {"study_runs": [{"run_dir": "mnist/sc-s0", "train_s": 5.0}],
              "text_runs": main, "text_study_runs": frontier}
    cost = {r["notebook"]: r for r in claims.compute_cost(tables)}
    assert (cost["02_char_transformer"]["runs"], cost["02_char_transformer"]["train_s"]) \
        == (3, 60.0)
    assert (cost["all"]["runs"], cost["all"]["train_s"]) == (4, 65.0)


def test_project_targets_take_every_gamma_of_the_frontiers_as_a_row():
    study = [_study("sc", s, g, acc, size) | {"entropy_coded_bytes": size - 1_500}
             for s in range(3) for g, acc, size in ((0.05, 0.991, 6_000), (0.4, 0.992, 2_900))]
    study += [_study("sc", 0, 0.4, 0.5, 100, tuning=True)]  # a tuning run: left out
    text = [{"method": m, "data": "names", "seed": s, "gamma": g, "test_loss": loss,
             "storage_bytes": size}
            for s in range(2) for m, g, loss, size in (("float", 0.0, 2.0, 800_000),
                                                       ("sc", 0.1, 2.01, 60_000),
                                                       ("sc", 0.3, 2.015, 36_000))]
    rows = {(r["data"], r["gamma"]): r for r in claims.project_targets(
        {"study_runs": study, "text_study_runs": text})}
    assert [r["met"] for k, r in sorted(rows.items()) if k[0] == "mnist"] == [False, True]
    assert rows[("mnist", 0.4)]["n"] == 3
    assert rows[("names", 0.1)]["float_fraction_mean"] == pytest.approx(0.075)
    assert rows[("names", 0.3)]["test_loss_rise_mean"] == pytest.approx(0.015)
    assert not rows[("names", 0.1)]["met"] and rows[("names", 0.3)]["met"]


def test_cbtpe_claims_use_notebook_01s_pairs_where_the_profile_has_them(tables):
    digits = {r["id"]: r for r in claims.assess_claims(tables)}
    assert digits["cbtpe-faster"]["n"] == 3  # no MNIST pairs: notebook 04's race
    mnist = [{"method": m, "seed": s, "storage_bytes": size, "test_acc": 0.99,
              "search_s": t} for s in range(2)
             for m, size, t in (("cbtpe", 800, 100.0), ("cbtpe-tpe", 1_000, 200.0))]
    rows = {r["id"]: r for r in claims.assess_claims(tables | {"image_search_runs": mnist})}
    assert rows["cbtpe-smaller"]["n"] == 2
    assert rows["cbtpe-smaller"]["mean"] == pytest.approx(0.2)
    assert rows["cbtpe-faster"]["mean"] == pytest.approx(2.0)
    assert rows["cbtpe-no-loss"]["mean"] == pytest.approx(0.0)


def test_compute_cost_sets_core_seconds_against_the_flop_floor():
    rows = [{"run_dir": "mnist/sc-s0", "train_s": 40.0, "train_flops": 2e12},
            {"run_dir": "mnist/sc-s1", "train_s": 60.0, "train_flops": 3e12},
            {"run_dir": "mnist/old-s0", "train_s": 99.0}]  # older code: no FLOPs recorded
    cost = {r["notebook"]: r for r in claims.compute_cost({"study_runs": rows},
                                                          peak_gflops=100.0)}
    mnist = cost["01_mnist_cnn"]
    assert (mnist["runs"], mnist["runs_with_flops"], mnist["train_s"]) == (3, 2, 199.0)
    assert mnist["floor_s"] == 50.0 and mnist["vs_floor"] == 2.0  # 100 s against 5e12/1e11
    assert cost["all"]["vs_floor"] == 2.0
    assert claims.compute_cost({"study_runs": rows})[0]["floor_s"] is None  # no peak known


def test_each_notebooks_floor_takes_the_peak_of_the_machine_it_ran_on(tmp_path):
    """06 ran on a machine of 100 GFLOP/s, 07 on one of 200: each notebook's floor is its
    FLOPs at its own machine's peak (what its seconds were spent against), the total's
    floor their sum, and a notebook with no recorded peak takes this machine's."""
    regime = [{"run_dir": "runs/paper/mnist/sc-s0", "train_s": 40.0, "train_flops": 2e12}]
    files = [{"run_dir": "runs/paper/mnist/sc-long-s0", "train_s": 30.0, "train_flops": 4e12}]
    ops = [{"run_dir": "runs/paper/mnist/op-s0", "train_s": 10.0, "train_flops": 1e12}]
    for notebook, peak in (("06_regimes", 100.0), ("07_file_budget", 200.0)):
        report.save_json({"notebook": notebook, "hardware": {"peak_gflops": peak}}, tmp_path,
                         f"{notebook}__run")
    peaks = claims.recorded_peaks(tmp_path)
    assert peaks == {"06_regimes": 100.0, "07_file_budget": 200.0}
    tables = {"regime_all_runs": regime, "file_runs": files, "op_runs": ops}
    cost = {r["notebook"]: r for r in claims.compute_cost(tables, peak_gflops=50.0,
                                                          peaks=peaks)}
    assert cost["06_regimes"]["floor_s"] == 20.0 and cost["07_file_budget"]["floor_s"] == 20.0
    assert cost["08_operating_point"]["floor_s"] == 20.0  # this machine's 50 GFLOP/s
    assert cost["all"]["floor_s"] == 60.0 and cost["all"]["vs_floor"] == round(80 / 60, 2)
    assert cost["all"]["peak_gflops"] == pytest.approx(7e12 / 60 / 1e9)
    by_method = claims.cost_by_method(tables, peak_gflops=50.0, peaks=peaks)
    assert sorted(r["floor_s"] for r in by_method) == [20.0, 20.0, 20.0]


def test_a_run_counts_once_per_folder_and_once_per_study_that_trained_it():
    """One folder named from the checkout and from notebooks/ is one run; the same
    settings trained in two studies' folders (06's digits/, 04's search/digits/) are two."""
    row = {"train_s": 10.0, "train_flops": 1e12}
    regime = [row | {"run_dir": "runs/paper/digits/sc-s0-x"},
              row | {"run_dir": "../runs/paper/digits/sc-s0-x"}]
    search = [row | {"run_dir": "../runs/paper/search/digits/sc-s0-x"}]
    cost = {r["notebook"]: r for r in claims.compute_cost(
        {"regime_all_runs": regime, "search_runs": search})}
    assert cost["06_regimes"]["runs"] == 1 and cost["04_cbtpe_search"]["runs"] == 1
    assert cost["all"]["runs"] == 2 and cost["all"]["train_s"] == 20.0


def test_cost_by_method_says_which_methods_sit_furthest_above_the_flop_floor():
    regime = [{"run_dir": f"mnist/{m}-s{s}", "method": m, "train_s": t, "train_flops": f}
              for s in range(2)
              for m, t, f in (("float", 15.0, 1e12), ("sc", 30.0, 1e12), ("sgsc", 40.0, 2e12))]
    regime.append({"run_dir": "mnist/sc-s9", "method": "sc", "train_s": 99.0})  # no FLOPs
    files = [{"run_dir": "mnist/sc-s0", "method": "sc", "train_s": 30.0, "train_flops": 1e12},
             {"run_dir": "mnist/sc-long-s0", "method": "sc", "train_s": 15.0,
              "train_flops": 1e12}]
    tables = {"regime_all_runs": regime, "file_runs": files}
    rows = {(r["notebook"], r["method"]): r
            for r in claims.cost_by_method(tables, peak_gflops=100.0)}
    assert set(rows) == {("06_regimes", "float"), ("06_regimes", "sc"),
                         ("06_regimes", "sgsc"), ("07_file_budget", "sc")}
    sc = rows[("06_regimes", "sc")]
    assert (sc["runs"], sc["train_s"], sc["floor_s"], sc["vs_floor"]) == (2, 60.0, 20.0, 3.0)
    assert sc["above_floor_s"] == 40.0 and rows[("06_regimes", "float")]["vs_floor"] == 1.5
    assert rows[("07_file_budget", "sc")]["runs"] == 1  # 06's run is counted there only
    # the seconds above the floor: float 10, sc 40, sgsc 40, 07's sc 5
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0, abs=1e-3)
    assert sc["share"] == pytest.approx(40 / 95, abs=1e-4)
    assert all(r["share"] is None for r in claims.cost_by_method(tables, peak_gflops=None))


def test_the_image_target_reads_the_file_budget_table_where_there_is_one():
    def row(method, gamma, variant, size, acc, allowed=True):
        return {"method": method, "epochs": 6, "gamma": gamma, "variant": variant,
                "coding": studies.variant_coding(variant),
                "seeds": 3, "test_acc_mean": acc, "test_acc_std": 0.001,
                "file_bytes_mean": size, "file_bytes_std": 10.0, "allowed": allowed,
                "entropy_floor_bytes_mean": size - 100}  # each encoding's own floor

    smallest = [row("sc", 0.15, "packed", 2_900, 0.9905), row("sc", 0.15, "entropy", 1_600,
                                                                0.9905),
                row("sc", 0.15, "narrow+entropy", 1_450, 0.9905),
                row("sc-rate", 0.4, "packed", 2_500, 0.9902),
                row("sc-rate", 0.4, "narrow+entropy", 1_300, 0.9890, allowed=False),
                row("sc-rate", 0.4, "entropy", 1_700, 0.9902)]
    rows = {(r["method"], r["gamma"]): r
            for r in claims.project_targets({"file_smallest": smallest,
                                             "study_runs": [_study("sc", 0, 0.05, 1.0, 1)]})}
    assert set(rows) == {("sc", 0.15), ("sc-rate", 0.4)}  # 01's study gives way
    sc = rows[("sc", 0.15)]
    assert sc["met"] and sc["entropy_coding"] == "narrow+entropy"
    assert sc["entropy_coded_bytes_mean"] == 1_450 and sc["storage_bytes_mean"] == 2_900
    # the floor beside the coded file is its own precision's: 1,450 B narrowed, not the
    # packed file's
    assert sc["entropy_floor_bytes_mean"] == 1_350
    rate = rows[("sc-rate", 0.4)]  # its narrowed file changed its accuracy: not counted
    assert rate["entropy_coded_bytes_mean"] == 1_700 and not rate["met"]
    assert rate["met_packed"] and not rate["met_coded"]  # each half of the target apart
    assert sc["met_packed"] and sc["met_coded"]
    # a model whose seeds are not all there meets nothing, however good its mean
    partial = [r | {"complete": False} for r in smallest if r["method"] == "sc"]
    [sc_partial] = claims.project_targets({"file_smallest": partial, "study_runs": []})
    assert not (sc_partial["met_packed"] or sc_partial["met_coded"])


def test_the_60_percent_claim_is_measured_at_the_papers_point_where_08_ran(tables):
    op = [{"method": m, "seed": s, "test_acc": acc + 0.001 * s, "float_fraction": frac,
           "test_acc_minus_float": gain}
          for s in range(3) for m, acc, frac, gain in (("float", 0.986, 1.0, 0.0),
                                                       ("sc", 0.993, 0.63, 0.007),
                                                       ("sgsc", 0.994, 0.63, 0.008))]
    rows = {r["id"]: r for r in claims.assess_claims(tables | {"op_runs": op})}
    sixty = rows["sgsc-accuracy-vs-float"]
    assert sixty["mean"] == pytest.approx(0.008) and sixty["at_operating_point"] == "yes"
    assert sixty["size_fraction"] == pytest.approx(0.63)
    assert rows["sgsc-vs-sc-at-point"]["mean"] == pytest.approx(0.001)
    without = {r["id"]: r for r in claims.assess_claims(tables)}
    assert without["sgsc-vs-sc-at-point"]["verdict"] == "not measured"


def test_the_transformer_claim_moves_to_the_papers_point_where_08_trained_it(tables):
    """02's sgsc (a few % of the float size) answers the 1.8 -> 1.6 claim only until 08's
    transformer rows exist; then the row measures sgsc minus float loss there."""
    op = [{"method": m, "seed": s, "test_loss": loss, "float_fraction": frac,
           "test_loss_minus_float": change}
          for s in range(3) for m, loss, frac, change in (("float", 2.0, 1.0, 0.0),
                                                          ("sgsc", 1.97 + 0.001 * s, 0.62,
                                                           -0.03 + 0.001 * s))]
    before = {r["id"]: r for r in claims.assess_claims(tables)}["sgsc-text-loss"]
    after = {r["id"]: r for r in claims.assess_claims(tables | {"op_text_runs": op})}[
        "sgsc-text-loss"]
    assert before["mean"] == pytest.approx(0.01) and before["at_operating_point"] != "yes"
    assert after["mean"] == pytest.approx(-0.029) and after["n"] == 3
    assert after["size_fraction"] == pytest.approx(0.62)
    assert after["at_operating_point"] == "yes"
