"""The regime study's plan: the registered gammas and trials, equal tuning effort, and
settings chosen on validation against the default sc frontier at the same size."""

from __future__ import annotations

from sgsc.experiments import regimes


def test_every_regime_is_planned_as_registered():
    assert set(regimes.REGIMES) == {"digits", "mnist-1k", "mnist-4k", "mnist"}
    for regime in regimes.REGIMES.values():
        assert len(regime.sc_gammas) == 5 and len(regime.sgsc_gammas) == 4
        assert regime.middle in regime.sgsc_gammas and regime.middle in regime.sc_gammas
        # sc's range reaches past sgsc's (sgsc is larger at equal gamma)
        assert min(regime.sc_gammas) < min(regime.sgsc_gammas)
        assert len(regime.trials["sc"]) == len(regime.trials["sgsc"]) == 5  # equal effort
        # sgsc's knobs as the issue lists them: weight, set size, threshold, L1
        knobs = {k for trial in regime.trials["sgsc"] for k in trial}
        assert knobs == {"lambda_pres", "preservation_size", "feedback", "l1_weights"}


def test_stage_one_trains_the_yardstick_and_the_trials_on_seed_0():
    regime = regimes.REGIMES["mnist-1k"]
    plan = regimes.stage_one(regime, [0, 1, 2])
    floats = [r for r in plan if r["method"] == "float"]
    assert [r["seed"] for r in floats] == [0, 1, 2]
    others = [r for r in plan if r["method"] != "float"]
    assert {r["seed"] for r in others} == {0}
    yardstick = [r for r in others if r["method"] == "sc" and set(r["overrides"]) == {"gamma"}]
    assert sorted(r["overrides"]["gamma"] for r in yardstick) == sorted(regime.sc_gammas)
    trials = [r for r in others if set(r["overrides"]) != {"gamma"}]
    assert len(trials) == 10 and all(r["overrides"]["gamma"] == regime.middle for r in trials)


def _result(method, gamma, size, val_acc, **params):
    base = {"gamma": gamma, "lr_quant": 0.5, "init_bits": 8.0}
    return {"data": "mnist-1k", "method": method, "seed": 0, "storage_bytes": size,
            "val_acc": val_acc, "params": base | params}


def test_settings_are_chosen_by_validation_gain_over_the_sc_frontier_at_equal_size():
    regime = regimes.REGIMES["mnist-1k"]
    # the default sc frontier: 0.90 at 1 KB ... 0.98 at 16 KB (a line in log size)
    results = [_result("sc", g, s, a) for g, s, a in
               ((0.4, 1000, 0.90), (0.15, 2000, 0.92), (0.05, 4000, 0.94),
                (0.015, 8000, 0.96), (0.005, 16000, 0.98))]
    # sc's lr_quant 1.0 is smaller and just as accurate as the line: a gain
    results.append(_result("sc", 0.05, 2000, 0.93, lr_quant=1.0))
    # sgsc at its default: larger and higher, but below the line; with lambda 4: above
    results.append(_result("sgsc", 0.05, 8000, 0.955))
    results.append(_result("sgsc", 0.05, 8000, 0.965, lambda_pres=4.0))
    results.append(_result("sgsc", 0.05, 64000, 0.99, l1_weights=0.0))  # outside: unscored
    chosen, table = regimes.choose_settings(regime, results)
    assert chosen == {"sc": {"lr_quant": 1.0}, "sgsc": {"lambda_pres": 4.0}}
    rows = {(r["method"], r["setting"]): r for r in table}
    assert rows[("sgsc", "l1_weights=0.0")]["val_gain_over_sc_frontier"] is None
    assert abs(rows[("sgsc", "defaults")]["val_gain_over_sc_frontier"] + 0.005) < 1e-9
    assert rows[("sgsc", "lambda_pres=4.0")]["chosen"]
    stage_two = regimes.stage_two(regime, chosen, [0, 1])
    assert len(stage_two) == 2 * (5 + 4)
    assert all(r["overrides"]["lambda_pres"] == 4.0 for r in stage_two if r["method"] == "sgsc")


def test_the_set_size_trial_is_told_apart_by_the_runs_preservation_size():
    regime = regimes.REGIMES["mnist-1k"]
    results = [_result("sc", g, s, a) for g, s, a in ((0.4, 1000, 0.90), (0.005, 16000, 0.98))]
    default = _result("sgsc", 0.05, 4000, 0.94) | {"preservation_size": 100}
    larger = _result("sgsc", 0.05, 4000, 0.95) | {"preservation_size": 300}
    chosen, table = regimes.choose_settings(regime, [*results, default, larger])
    assert chosen["sgsc"] == {"preservation_size": 300}
    assert {r["setting"] for r in table if r["method"] == "sgsc"} == {
        "defaults", "preservation_size=300"}


def test_the_feedback_trial_names_the_field_it_changes():
    [trial] = [t for t in regimes.REGIMES["digits"].trials["sgsc"] if "feedback" in t]
    assert regimes._describe(trial) == "feedback: threshold=0.2"


def test_secondary_rows_match_sizes_per_seed_for_accuracy_and_the_worst_class():
    import pytest

    rows = []
    for seed, shift in ((0, 0.0), (1, 0.004), (2, -0.002)):
        for gamma, size, acc in ((0.3, 1000, 0.90), (0.1, 4000, 0.94)):
            rows.append({"method": "sc", "seed": seed, "gamma": gamma, "storage_bytes": size,
                         "test_acc": acc + shift, "worst_class_acc": acc - 0.1})
        # sgsc at 2000 B, halfway on the log-size axis: 1 point above sc there
        rows.append({"method": "sgsc", "seed": seed, "gamma": 0.2, "storage_bytes": 2000,
                     "test_acc": 0.93 + shift, "worst_class_acc": 0.80})
    [line] = regimes.secondary_rows("digits", rows)
    assert line["kind"] == "secondary" and line["gamma"] == 0.2
    assert line["test_acc_difference"] == pytest.approx(0.01)
    assert line["test_acc_ci_low"] == pytest.approx(0.01)  # no spread in the difference
    assert line["worst_class_acc_difference"] == pytest.approx(-0.02)
    assert line["test_acc_matched"] == 3
    assert line["sgsc_test_acc_std"] == pytest.approx(0.003055, abs=1e-5)


def test_the_file_runs_are_sc_rate_at_each_gamma_and_each_long_budget_of_each_method():
    long = ({"epochs": 18, "gammas": {"sc": (0.15, 0.1), "sc-rate": (0.15,)}},
            {"epochs": 54, "gammas": {"sc": (0.15,)}})
    requests = regimes.file_requests("mnist", [0, 1], [0.05, 0.4], long)
    assert [(r["method"], r["seed"], r["overrides"]) for r in requests] == [
        ("sc-rate", 0, {"gamma": 0.05}), ("sc-rate", 1, {"gamma": 0.05}),
        ("sc-rate", 0, {"gamma": 0.4}), ("sc-rate", 1, {"gamma": 0.4}),
        ("sc", 0, {"epochs": 18, "gamma": 0.15}), ("sc", 1, {"epochs": 18, "gamma": 0.15}),
        ("sc", 0, {"epochs": 18, "gamma": 0.1}), ("sc", 1, {"epochs": 18, "gamma": 0.1}),
        ("sc-rate", 0, {"epochs": 18, "gamma": 0.15}),
        ("sc-rate", 1, {"epochs": 18, "gamma": 0.15}),
        ("sc", 0, {"epochs": 54, "gamma": 0.15}), ("sc", 1, {"epochs": 54, "gamma": 0.15})]


def test_run_rows_list_every_run_once_with_its_cost():
    results = [{"data": "mnist", "method": "float", "seed": 0, "run_dir": "f0", "train_s": 50.0,
                "train_flops": 1e12, "params": {"epochs": 3}},
               {"data": "mnist", "method": "sc", "seed": 0, "run_dir": "s0", "train_s": 80.0,
                "train_flops": 2e12, "params": {"gamma": 0.05}, "storage_bytes": 4000,
                "val_acc": 0.99}]
    rows = regimes.run_rows(results + results[1:])  # a run reopened twice counts once
    assert [(r["method"], r["gamma"], r["train_s"]) for r in rows] == [
        ("float", None, 50.0), ("sc", 0.05, 80.0)]


def test_reopening_only_lists_a_regimes_missing_runs_and_trains_none(tmp_path):
    regime = regimes.REGIMES["digits"]
    study = regimes.regime_runs(regime, [0, 1], str(tmp_path), train_missing=False)
    assert study.results == [] and study.chosen == {} and study.tuning == []
    planned = regimes.stage_one(regime, [0, 1])
    stage_one = [m for m in study.missing if m["stage"] == "one"]
    assert len(stage_one) == len(planned)
    assert [m for m in study.missing if m["stage"] == "two"] == [
        {"regime": "digits", "stage": "two", "method": "all", "seed": None,
         "overrides": "planned after stage one"}]
    assert not any(tmp_path.iterdir())


def test_a_requests_model_config_reaches_the_worker_process_that_trains_it(tmp_path):
    """A model override travels with the request: the worker (a separate process) trains
    the narrower network, and the parent's defaults are left as they were."""
    from sgsc.experiments import defaults

    before = defaults.DEFAULTS["digits"]["model"]
    narrow = {"widths": (4, 4, 8, 8)}
    spec = regimes.request("digits", "float", 0, model=narrow)
    assert spec["model"] == narrow and regimes.request("digits", "float", 0).keys() == {
        "data", "method", "seed", "overrides"}
    budget = {"float_epochs": 1}
    [small] = regimes.train([spec], str(tmp_path), 1, budget, log=lambda line: None)
    [usual] = regimes.train([regimes.request("digits", "float", 0)], str(tmp_path), 1, budget,
                            log=lambda line: None)
    assert small["run_dir"] != usual["run_dir"]  # the architecture is part of the run's key
    assert small["live_weights"] < usual["live_weights"] / 4
    assert defaults.DEFAULTS["digits"]["model"] == before
    # reopening in this process builds the same narrow model again, and finds the run
    [again] = regimes.train([spec], str(tmp_path), 1, budget, train_missing=False)
    assert again["run_dir"] == small["run_dir"] and again["reopened"]


def test_a_requests_own_epochs_win_over_the_studys_budget(monkeypatch, tmp_path):
    """07's long runs ask for more compression epochs than the regime budget gives every
    run: they must train that long, not land in the frontier runs' folders."""
    from sgsc.experiments import runs

    asked = []
    monkeypatch.setattr(runs, "run", lambda method, data, **kw: asked.append(kw) or None)
    budget = {"float_epochs": 2, "epochs": 2}
    long, usual = (regimes.request("digits", "sc", 0, 0.3, epochs=4),
                   regimes.request("digits", "sc", 0, 0.3))
    regimes.train([long, usual], str(tmp_path), budget=budget, train_missing=False)
    assert [kw["epochs"] for kw in asked] == [4, 2]
    assert all(kw["float_overrides"] == {"epochs": 2} for kw in asked)


def test_a_seeds_runs_start_when_its_float_is_done_not_when_every_float_is(tmp_path):
    """Two workers, three floats: the third float trains beside seed 0's sc run instead of
    alone.  Seed 2's float waits (up to 5 s) for another run to start; a scheduler that
    held every sc run back until all floats were done would leave it waiting."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    started = set()

    def fake_run(spec):
        name = f"{spec['method']} s{spec['seed']}"
        started.add(name)
        if name == "float s2":
            deadline = time.monotonic() + 5
            while "sc s0" not in started and time.monotonic() < deadline:
                time.sleep(0.01)
            return {"seed": 2, "overlapped": "sc s0" in started}
        return {"seed": spec["seed"], "method": spec["method"]}

    requests = [regimes.request("digits", "float", s) for s in (0, 1, 2)]
    requests += [regimes.request("digits", "sc", s, 0.3) for s in (0, 1, 2)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = regimes.schedule(pool, requests, fake_run, log=lambda line: None)
    assert results[2]["overlapped"]
    assert [r["method"] for r in results[3:]] == ["sc"] * 3  # in the requests' order
    assert [r["seed"] for r in results] == [0, 1, 2, 0, 1, 2]


def test_a_float_nobody_asked_for_is_trained_once_before_its_seeds_runs():
    from concurrent.futures import ThreadPoolExecutor

    order = []
    requests = [regimes.request("digits", "sc", 0, g) for g in (0.1, 0.3)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = regimes.schedule(pool, requests,
                                   lambda spec: order.append(spec["method"]) or spec,
                                   log=lambda line: None)
    assert order == ["float", "sc", "sc"] and results == requests


def test_a_free_worker_takes_the_earliest_ready_request_so_a_settings_seeds_finish_together():
    """One slot, two settings of three seeds each, listed setting by setting: after the
    floats the runs start in the requests' order.  A pool's own queue would start them
    seed by seed (each seed's runs queued when its float finished), so a study stopped
    half way would have no setting on every seed."""
    from concurrent.futures import ThreadPoolExecutor

    started = []
    requests = [regimes.request("digits", "sc", s, g) for g in (0.1, 0.3) for s in (0, 1, 2)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        results = regimes.schedule(pool, requests,
                                   lambda spec: started.append(spec) or spec,
                                   log=lambda line: None, slots=1)
    assert [r["method"] for r in started[:3]] == ["float"] * 3
    assert started[3:] == requests and results == requests


def test_no_more_runs_are_in_flight_than_slots():
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    lock, running, most = threading.Lock(), [0], [0]

    def fake_run(spec):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return spec

    requests = [regimes.request("digits", "sc", s, g) for g in (0.1, 0.3) for s in (0, 1)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert regimes.schedule(pool, requests, fake_run, log=lambda line: None,
                                slots=2) == requests
    assert most[0] == 2


def test_unfinished_lists_each_request_without_a_result_by_name():
    requests = [regimes.request("mnist", "float", 0), regimes.request("mnist", "sc", 4, 0.05),
                regimes.request("names", "sgsc", 1, 0.0, init_bits=20.0)]
    assert regimes.unfinished(requests, [{"done": 1}, None, None]) == [
        {"request": "mnist sc s4 {'gamma': 0.05}", "setting": "mnist sc {'gamma': 0.05}",
         "seed": 4},
        {"request": "names sgsc s1 {'init_bits': 20.0, 'gamma': 0.0}",
         "setting": "names sgsc {'init_bits': 20.0, 'gamma': 0.0}", "seed": 1}]
    assert regimes.unfinished(requests[:1], [None]) == [
        {"request": "mnist float s0", "setting": "mnist float", "seed": 0}]


def test_cost_rows_split_sgscs_extra_time_into_flops_and_time_per_flop():
    """sgsc at twice sc's seconds on four times its FLOPs: ratio 2, FLOP ratio 4, and half
    sc's seconds per FLOP; a run without a partner (sc at a gamma sgsc lacks) is left out."""
    def row(method, gamma, seconds, flops):
        return {"regime": "mnist", "method": method, "seed": 0, "gamma": gamma,
                "train_s": seconds, "train_flops": flops}

    rows = [row("sc", 0.05, 10.0, 1e12), row("sgsc", 0.05, 20.0, 4e12),
            row("sc", 0.15, 30.0, 1e12), row("sgsc", 0.15, 60.0, 4e12),
            row("sc", 0.005, 500.0, 9e12)]
    [cost] = regimes.cost_rows(rows)
    assert cost["pairs"] == 2 and cost["sc_train_s"] == 40.0 and cost["sgsc_train_s"] == 80.0
    assert cost["time_ratio"] == 2.0 and cost["flops_ratio"] == 4.0
    assert cost["time_per_flop_ratio"] == 0.5
    assert regimes.cost_rows([row("sc", 0.05, 10.0, 1e12)]) == []
