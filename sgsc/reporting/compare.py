"""Comparing methods honestly: paired by seed, at matched size, with confidence intervals.

Two compression methods that end at different sizes cannot be compared by accuracy
alone: a bigger model is usually a better one.  :func:`matched_differences` therefore
reads the *reference* method's accuracy (or any metric) at exactly the size the other
method's run reached, by linear interpolation in log size along the reference's frontier
of the same seed (its runs at several gammas), and pairs the two by seed.  Sizes outside
the reference frontier are not extrapolated: that run gets no difference.

:func:`t_interval` turns paired differences into a mean with a Student-t confidence
interval, and :func:`verdict` reads a claim off it: *supported* when the interval lies
wholly on the claimed side of the claimed value, *refuted* when wholly on the other,
*inconclusive* otherwise -- with :func:`seeds_for_power` saying how many seeds would
find a stated smallest effect at the observed spread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from scipy import stats

CONFIDENCE = 0.95


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """``n``, ``mean``, ``std`` (n - 1) and the two-sided ``ci_low`` / ``ci_high`` of the
    mean (None when fewer than two values)."""
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    mean = sum(values) / n
    if n < 2:
        return {"n": 1, "mean": mean, "std": None, "ci_low": None, "ci_high": None}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def verdict(interval: dict[str, Any], claimed: float = 0.0, side: str = "above") -> str:
    """``supported`` / ``refuted`` / ``inconclusive`` for "the mean is ``side`` ``claimed``"."""
    if side not in ("above", "below"):
        raise ValueError(f"side must be 'above' or 'below', got {side!r}")
    low, high = interval.get("ci_low"), interval.get("ci_high")
    if low is None or high is None:
        return "inconclusive"
    if side == "below":
        low, high, claimed = -high, -low, -claimed
    if low > claimed:
        return "supported"
    if high < claimed:
        return "refuted"
    return "inconclusive"


def seeds_for_power(std: float | None, effect: float, alpha: float = 0.05,
                    power: float = 0.8, limit: int = 10_000) -> int | None:
    """Seeds a two-sided one-sample t-test at ``alpha`` needs to find a true difference of
    ``effect`` with probability ``power``, at spread ``std`` (noncentral t).  The effect is
    a stated smallest effect worth finding, never the observed mean -- a planned n from
    the observed mean has about even odds.  None without a spread."""
    if not std or effect <= 0:
        return None
    for n in range(2, limit + 1):
        critical = stats.t.ppf(1 - alpha / 2, n - 1)
        shift = effect / std * math.sqrt(n)
        reached = stats.nct.sf(critical, n - 1, shift) + stats.nct.cdf(-critical, n - 1, shift)
        if reached >= power:
            return n
    return None


def interpolate_log_size(points: Sequence[tuple[float, float]], size: float) -> float | None:
    """The value at ``size`` on the line through ``points`` (size, value), linear in
    ``log(size)``; None outside the sizes the points cover.  Equal sizes are averaged."""
    if size is None or size <= 0:
        return None
    by_size: dict[float, list[float]] = {}
    for s, v in points:
        if s is not None and s > 0 and v is not None:
            by_size.setdefault(float(s), []).append(float(v))
    ordered = sorted((s, sum(v) / len(v)) for s, v in by_size.items())
    if not ordered or not ordered[0][0] <= size <= ordered[-1][0]:
        return None
    for (s0, v0), (s1, v1) in zip(ordered, ordered[1:], strict=False):
        if s0 <= size <= s1:
            if s1 == s0:
                return v0
            t = (math.log(size) - math.log(s0)) / (math.log(s1) - math.log(s0))
            return v0 + t * (v1 - v0)
    return ordered[0][1]  # a single point, at exactly its size


def matched_differences(rows: Sequence[dict], method: str, reference: str = "sc", *,
                        metric: str = "test_acc", size: str = "storage_bytes") -> list[dict]:
    """Per run of ``method``: its ``metric`` minus the ``reference`` method's at the same
    size and seed (interpolated on the reference's frontier; see the module docstring).

    Each row: ``seed``, ``gamma``, ``size``, ``value``, ``reference_value`` and
    ``difference`` (None where the size lies outside the reference frontier).  A run of
    ``method`` never serves as its own reference point.
    """
    out = []
    for row in rows:
        if row["method"] != method:
            continue
        frontier = [(r[size], r[metric]) for r in rows
                    if r["method"] == reference and r["seed"] == row["seed"] and r is not row]
        matched = interpolate_log_size(frontier, row[size])
        out.append({"method": method, "seed": row["seed"], "gamma": row.get("gamma"),
                    "size": row[size], "value": row[metric], "reference": reference,
                    "reference_value": matched,
                    "difference": None if matched is None else row[metric] - matched})
    return out


# ----------------------------------------------------------------------------- the regime study
# docs/PREREGISTRATION.md: the primary endpoint, its tests, and the verdict's words.

EQUIVALENCE_MARGIN = 0.002  # +-0.2 percentage points of accuracy
ALPHA = 0.05


def per_seed_endpoint(rows: Sequence[dict], method: str = "sgsc", reference: str = "sc",
                      metric: str = "test_acc") -> dict[int, float]:
    """Per seed: the mean, over ``method``'s runs whose size lies inside ``reference``'s
    frontier of that seed, of the metric's difference at the same size (seeds with no
    such run are left out)."""
    by_seed: dict[int, list[float]] = {}
    for pair in matched_differences(rows, method, reference, metric=metric):
        if pair["difference"] is not None:
            by_seed.setdefault(pair["seed"], []).append(pair["difference"])
    return {seed: sum(v) / len(v) for seed, v in sorted(by_seed.items())}


def t_test_p(values: Sequence[float]) -> float | None:
    """Two-sided one-sample t-test p of mean 0 (None with fewer than two values)."""
    values = [float(v) for v in values]
    if len(values) < 2:
        return None
    if len(set(values)) == 1:
        return 0.0 if values[0] != 0 else 1.0
    return float(stats.ttest_1samp(values, 0.0).pvalue)


def sign_flip_p(values: Sequence[float]) -> float | None:
    """Exact two-sided sign-flip permutation p of mean 0: the share of the 2^n sign
    patterns whose |mean| is at least the observed one (n <= 20)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0 or n > 20:
        return None
    observed = abs(sum(values)) - 1e-12
    hits = 0
    for pattern in range(1 << n):
        total = sum(-v if pattern >> i & 1 else v for i, v in enumerate(values))
        hits += abs(total) >= observed
    return hits / (1 << n)


def equivalence_p(values: Sequence[float], margin: float = EQUIVALENCE_MARGIN) -> float | None:
    """Two one-sided t-tests (TOST) of |mean| < ``margin``: the larger of the two p's
    (equivalence is shown when it is below alpha)."""
    values = [float(v) for v in values]
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    if std == 0:
        return 0.0 if abs(mean) < margin else 1.0
    se = std / math.sqrt(n)
    lower = stats.t.sf((mean + margin) / se, n - 1)  # H0: mean <= -margin
    upper = stats.t.cdf((mean - margin) / se, n - 1)  # H0: mean >= +margin
    return float(max(lower, upper))


def holm(pvalues: dict[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjustment of a family of p-values (None stays None)."""
    present = sorted((p, k) for k, p in pvalues.items() if p is not None)
    m = len(present)
    adjusted, running = {}, 0.0
    for i, (p, key) in enumerate(present):
        running = max(running, min(1.0, (m - i) * p))
        adjusted[key] = running
    return {k: adjusted.get(k) for k in pvalues}


def regime_verdict(mean: float | None, adjusted_p: float | None,
                   equivalence: float | None, alpha: float = ALPHA) -> str:
    """The pre-registered words: sgsc better / sgsc worse (Holm-adjusted p below alpha),
    equivalent (the equivalence test below alpha), else inconclusive."""
    if mean is not None and adjusted_p is not None and adjusted_p < alpha:
        return "sgsc better" if mean > 0 else "sgsc worse"
    if equivalence is not None and equivalence < alpha:
        return "equivalent"
    return "inconclusive"


def dominated(rows: Sequence[dict], method: str = "sgsc", reference: str = "sc",
              metric: str = "test_acc", size: str = "storage_bytes") -> tuple[int, int]:
    """(runs of ``method`` that a run of ``reference`` of the same seed beats with a file
    no larger and a metric no worse -- one strictly better -- , runs of ``method``)."""
    runs = [r for r in rows if r["method"] == method]
    count = 0
    for run in runs:
        for other in rows:
            if other["method"] != reference or other["seed"] != run["seed"]:
                continue
            no_worse = other[size] <= run[size] and other[metric] >= run[metric]
            if no_worse and (other[size] < run[size] or other[metric] > run[metric]):
                count += 1
                break
    return count, len(runs)


NOT_FINISHED = "not finished"  # the verdict of a registered regime whose runs are missing


def regime_endpoints(rows_by_regime: dict[str, Sequence[dict]],
                     margin: float = EQUIVALENCE_MARGIN,
                     family: Sequence[str] = ()) -> list[dict]:
    """The primary endpoint of every regime (docs/PREREGISTRATION.md), Holm across them:
    per regime the per-seed values, their mean and 95 % t-interval, the t-test p (raw and
    Holm-adjusted), the sign-flip p, the equivalence p and the verdict, and the
    (secondary) dominance count.

    ``family``: the registered regimes.  One without rows (its runs did not all finish)
    gets a row of its own, verdict ``not finished`` and nothing computed, and counts in
    Holm's correction with p = 1 -- a valid p-value for any hypothesis, so the finished
    regimes' family-wise error stays controlled across the whole registered family."""
    table = []
    for regime, rows in rows_by_regime.items():
        per_seed = per_seed_endpoint(rows)
        values = list(per_seed.values())
        interval = t_interval(values)
        beaten, total = dominated(rows)
        table.append({"regime": regime, "seeds": len(values), "per_seed": per_seed,
                      "mean": interval["mean"], "ci_low": interval["ci_low"],
                      "ci_high": interval["ci_high"], "t_p": t_test_p(values),
                      "sign_flip_p": sign_flip_p(values),
                      "equivalence_p": equivalence_p(values, margin),
                      "margin": margin, "dominated": beaten, "sgsc_runs": total})
    absent = [name for name in family if name not in rows_by_regime]
    adjusted = holm({row["regime"]: row["t_p"] for row in table} | dict.fromkeys(absent, 1.0))
    for row in table:
        row["holm_p"] = adjusted[row["regime"]]
        row["verdict"] = regime_verdict(row["mean"], row["holm_p"], row["equivalence_p"])
    return table + [{"regime": name, "seeds": 0, "per_seed": {}, "mean": None,
                     "ci_low": None, "ci_high": None, "t_p": None, "sign_flip_p": None,
                     "equivalence_p": None, "margin": margin, "dominated": None,
                     "sgsc_runs": 0, "holm_p": None, "verdict": NOT_FINISHED}
                    for name in absent]
