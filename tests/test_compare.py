"""Comparisons at matched size, paired by seed, with t intervals and verdicts."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from sgsc.reporting.compare import (
    interpolate_log_size,
    matched_differences,
    seeds_to_resolve,
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


def test_seeds_to_resolve_is_the_first_n_whose_interval_excludes_the_claim():
    interval = t_interval([0.1, 0.3, -0.05])
    n = seeds_to_resolve(interval)
    mean, std = interval["mean"], interval["std"]
    half = lambda k: stats.t.ppf(0.975, k - 1) * std / math.sqrt(k)  # noqa: E731
    assert half(n) < mean <= half(n - 1)
    assert seeds_to_resolve({"mean": 0.0, "std": 1.0}) is None
    assert seeds_to_resolve({"mean": 1.0, "std": None}) is None


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
