"""Comparisons at matched size, paired by seed, with t intervals and verdicts."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from sgsc.reporting import compare
from sgsc.reporting.compare import (
    interpolate_log_size,
    matched_differences,
    seeds_for_power,
    t_interval,
    verdict,
)


def test_t_interval_matches_scipy():
    values = [0.1, 0.3, 0.2, 0.4]
    interval = t_interval(values)
    low, high = stats.t.interval(0.95, 3, loc=0.25, scale=stats.sem(values))
    assert interval["n"] == 4 and interval["mean"] == pytest.approx(0.25)
    assert interval["std"] == pytest.approx(stats.tstd(values))
    assert (interval["ci_low"], interval["ci_high"]) == pytest.approx((low, high))


def test_t_interval_of_too_few_values_has_no_bounds():
    assert t_interval([])["mean"] is None
    one = t_interval([0.5, None, math.nan])
    assert one["n"] == 1 and one["mean"] == 0.5 and one["ci_low"] is None


def test_an_interval_narrows_with_more_seeds():
    """The rule a +-1 std band lacked: at the same spread, more seeds decide."""
    few, many = t_interval([0.1, 0.3, 0.2]), t_interval([0.1, 0.3, 0.2] * 10)
    assert many["ci_high"] - many["ci_low"] < (few["ci_high"] - few["ci_low"]) / 3


@pytest.mark.parametrize("interval, side, expected", [
    ({"ci_low": 0.1, "ci_high": 0.3}, "above", "supported"),
    ({"ci_low": -0.3, "ci_high": -0.1}, "above", "refuted"),
    ({"ci_low": -0.1, "ci_high": 0.3}, "above", "inconclusive"),
    ({"ci_low": -0.3, "ci_high": -0.1}, "below", "supported"),
    ({"ci_low": None, "ci_high": None}, "above", "inconclusive")])
def test_verdicts(interval, side, expected):
    assert verdict(interval, 0.0, side) == expected


def test_verdict_against_a_claimed_value():
    assert verdict({"ci_low": 0.6, "ci_high": 0.9}, 0.5, "above") == "supported"
    assert verdict({"ci_low": 0.6, "ci_high": 0.9}, 1.0, "above") == "refuted"
    with pytest.raises(ValueError, match="side"):
        verdict({"ci_low": 0, "ci_high": 1}, 0, "sideways")


def test_seeds_for_power_finds_the_stated_effect_as_often_as_promised():
    """The n it gives detects a true difference of ``effect`` in 80 % of simulated
    experiments at that n (within sampling error), and n - 1 falls short; an effect
    twice the spread needs few seeds, a tenth of it many."""
    import numpy as np

    rng = np.random.default_rng(0)
    std, effect = 1.0, 0.8
    n = seeds_for_power(std, effect)

    def detected(k: int, trials: int = 20_000) -> float:
        samples = rng.normal(effect, std, size=(trials, k))
        return float(np.mean(stats.ttest_1samp(samples, 0.0, axis=1).pvalue < 0.05))

    assert detected(n) == pytest.approx(0.8, abs=0.03) or detected(n) > 0.8
    assert detected(n - 1) < 0.8
    assert seeds_for_power(1.0, 2.0) <= 5 and seeds_for_power(1.0, 0.1) > 700
    assert seeds_for_power(None, 0.5) is None and seeds_for_power(1.0, 0.0) is None


def test_interpolation_is_linear_in_log_size_and_never_extrapolates():
    points = [(1000, 0.90), (4000, 0.98)]
    assert interpolate_log_size(points, 2000) == pytest.approx(0.94)  # halfway in log
    assert interpolate_log_size(points, 1000) == pytest.approx(0.90)
    assert interpolate_log_size(points, 999) is None
    assert interpolate_log_size(points, 4001) is None
    assert interpolate_log_size([(1000, 0.9), (1000, 0.8)], 1000) == pytest.approx(0.85)
    assert interpolate_log_size([], 10) is None


def test_matched_differences_pair_by_seed_on_the_reference_frontier():
    rows = [
        {"method": "sc", "seed": 0, "storage_bytes": 1000, "test_acc": 0.90},
        {"method": "sc", "seed": 0, "storage_bytes": 4000, "test_acc": 0.98},
        {"method": "sc", "seed": 1, "storage_bytes": 1000, "test_acc": 0.50},
        {"method": "sc", "seed": 1, "storage_bytes": 4000, "test_acc": 0.60},
        {"method": "sgsc", "seed": 0, "storage_bytes": 2000, "test_acc": 0.95, "gamma": 0.1},
        {"method": "sgsc", "seed": 1, "storage_bytes": 2000, "test_acc": 0.56, "gamma": 0.1},
        {"method": "sgsc", "seed": 1, "storage_bytes": 9000, "test_acc": 0.70, "gamma": 0.01},
    ]
    pairs = matched_differences(rows, "sgsc")
    assert [p["seed"] for p in pairs] == [0, 1, 1]
    assert pairs[0]["reference_value"] == pytest.approx(0.94)
    assert pairs[0]["difference"] == pytest.approx(0.01)
    assert pairs[1]["difference"] == pytest.approx(0.56 - 0.55)  # seed 1's own frontier
    assert pairs[2]["difference"] is None  # outside sc's sizes: not extrapolated


# ----------------------------------------------------------------------------- the regime study


def _frontier_rows(seed, shift):
    """sc at three sizes on a straight line in log size, sgsc at two sizes inside it with
    accuracy ``shift`` above sc's line, one sgsc run outside sc's range."""
    import math as m

    line = lambda size: 0.9 + 0.01 * m.log2(size / 1000)  # noqa: E731
    rows = [{"method": "sc", "seed": seed, "storage_bytes": s, "test_acc": line(s)}
            for s in (1000, 4000, 16000)]
    rows += [{"method": "sgsc", "seed": seed, "storage_bytes": s, "test_acc": line(s) + shift}
             for s in (2000, 8000)]
    rows.append({"method": "sgsc", "seed": seed, "storage_bytes": 64000, "test_acc": 0.5})
    return rows


def test_the_endpoint_averages_each_seeds_matched_differences_inside_scs_range():
    rows = _frontier_rows(0, 0.004) + _frontier_rows(1, 0.002)
    per_seed = compare.per_seed_endpoint(rows)
    assert per_seed == pytest.approx({0: 0.004, 1: 0.002})  # the 64 KB run is outside


def test_sign_flips_holm_and_equivalence_behave_as_registered():
    assert compare.sign_flip_p([1, 2, 3, 4, 5]) == 2 / 32  # five seeds: never below 0.0625
    assert compare.sign_flip_p([1, -1]) == 1.0
    adjusted = compare.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None})
    assert adjusted == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06, "d": None})
    tight = [0.0005, -0.0004, 0.0002, -0.0001, 0.0003]
    assert compare.equivalence_p(tight, 0.002) < 0.05
    assert compare.equivalence_p([0.01, 0.012, 0.008], 0.002) > 0.5
    assert compare.regime_verdict(0.01, 0.01, 0.9) == "sgsc better"
    assert compare.regime_verdict(-0.01, 0.01, 0.9) == "sgsc worse"
    assert compare.regime_verdict(0.0001, 0.8, 0.01) == "equivalent"
    assert compare.regime_verdict(0.003, 0.2, 0.4) == "inconclusive"


def test_regime_endpoints_report_every_regime_with_holm_across_them():
    better = [r for s in range(5) for r in _frontier_rows(s, 0.01 + 0.001 * s)]
    same = [r for s in range(5) for r in _frontier_rows(s, (-1) ** s * 0.0002)]
    table = {r["regime"]: r for r in compare.regime_endpoints({"small": better, "big": same})}
    assert table["small"]["verdict"] == "sgsc better" and table["small"]["seeds"] == 5
    assert table["small"]["holm_p"] >= table["small"]["t_p"]
    assert table["small"]["ci_low"] > 0 and table["small"]["sign_flip_p"] == 2 / 32
    assert table["big"]["verdict"] == "equivalent"
    # secondary: only the run past sc's range, at 0.5, is beaten by a smaller, better sc
    assert table["small"]["dominated"] == 5 and table["small"]["sgsc_runs"] == 15
    worse = [dict(r, test_acc=r["test_acc"] - 0.05) if r["method"] == "sgsc" else r
             for r in same]
    assert compare.dominated(worse) == (15, 15)  # 5 points worse: a smaller sc beats each


def test_an_unfinished_regime_is_listed_and_counts_in_holm_as_p_one():
    better = [r for s in range(5) for r in _frontier_rows(s, 0.01 + 0.001 * s)]
    same = [r for s in range(5) for r in _frontier_rows(s, (-1) ** s * 0.0002)]
    alone = {r["regime"]: r for r in compare.regime_endpoints({"small": better, "big": same})}
    table = {r["regime"]: r for r in compare.regime_endpoints(
        {"small": better, "big": same}, family=("small", "big", "huge", "tiny"))}
    assert table["huge"]["verdict"] == compare.NOT_FINISHED and table["huge"]["mean"] is None
    assert table["tiny"]["holm_p"] is None and table["tiny"]["seeds"] == 0
    # the smallest p is multiplied by the registered family's size (4), not the finished 2
    assert table["small"]["holm_p"] == pytest.approx(min(1.0, 4 * table["small"]["t_p"]))
    assert alone["small"]["holm_p"] == pytest.approx(min(1.0, 2 * alone["small"]["t_p"]))
    assert table["small"]["t_p"] == alone["small"]["t_p"]  # nothing else moves
