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
*inconclusive* otherwise -- with :func:`seeds_to_resolve` saying how many seeds would
decide it if the spread stayed what it is.
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


def seeds_to_resolve(interval: dict[str, Any], claimed: float = 0.0,
                     confidence: float = CONFIDENCE, limit: int = 10_000) -> int | None:
    """Seeds for which the interval would exclude ``claimed`` if mean and std stayed as
    observed (None: no spread measured, or the mean sits on ``claimed``)."""
    mean, std = interval.get("mean"), interval.get("std")
    if mean is None or not std or mean == claimed:
        return None
    for n in range(2, limit + 1):
        if stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n) < abs(mean - claimed):
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
