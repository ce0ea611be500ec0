"""The papers' claims at their own terms, and this project's targets, from a profile's
metrics files.

Each :class:`Claim` quotes a paper (``../shared/PAPERS.md`` gives the figures), names the
per-seed quantity that tests it, the value the paper claims and on which side of it the
claim lies, and where the paper measured it (its *operating point*: e.g. a model kept at
60 % of the float size).  :func:`assess_claims` measures every claim, puts a 95 %
Student-t interval around the mean (:mod:`sgsc.reporting.compare`), tests the mean against
the claimed value (two-sided t-test) with Holm's correction across the claims, and reads a
verdict off the adjusted p: *supported* when it is below 0.05 with the mean on the claimed
side, *refuted* when below 0.05 on the other side, *inconclusive* otherwise -- then, and
only then, with the seeds that would find the claim's stated smallest effect with 80 %
power.  Each row says how large the measured model is against its float and whether that
is the paper's operating point.  Each seed (or, for the variance claim, each gamma) enters
a claim once.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sgsc.reporting import compare
from sgsc.reporting.report import METRICS, compare_to_float, load_table, mean_std

VERDICTS = ("supported", "refuted", "inconclusive", "not measured")
SCNN = "Cséfalvay & Imber 2023 (SCNN)"
SGSC = "Zbeeb et al. 2025 (SGSC)"
CBTPE = "Azizi et al. 2023 (CB-TPE)"


Measure = Callable[[dict[str, list[dict]]], list[float]]


@dataclass(frozen=True)
class Claim:
    """A claim in the paper's words, the quantity that tests it, the claimed value, and
    where the paper measured it."""

    id: str
    source: str
    quote: str  # the paper's words (PAPERS.md)
    measurement: str  # what one value of the measurement is
    claimed: float
    side: str  # "above" or "below": where the claim puts the measurement
    measure: Measure
    smallest_effect: float  # the smallest departure from `claimed` worth finding (its units)
    operating_point: str = ""  # where the paper measured it
    size_fraction: Measure | None = None  # per seed: the measured model's size / float's
    paper_fraction: float | None = None  # the paper's size / float, when it states one


# ----------------------------------------------------------------------------- measurements


def _by(rows: Sequence[dict], method: str, **match) -> dict[int, dict]:
    """Rows of ``method`` (and the given column values), by seed."""
    return {r["seed"]: r for r in rows if r["method"] == method
            and all(r.get(k) == v for k, v in match.items())}


def _paired(a: dict[int, dict], b: dict[int, dict], column: str,
            combine=lambda x, y: x - y) -> list[float]:
    return [combine(a[s][column], b[s][column]) for s in sorted(set(a) & set(b))
            if a[s].get(column) is not None and b[s].get(column) is not None]


def _float_fraction_bits(tables: dict[str, list[dict]]) -> list[float]:
    runs = tables.get("image_runs", [])
    return _paired(_by(runs, "sc"), _by(runs, "float"), "storage_bytes", lambda x, y: x / y)


def _float_fraction_weights(tables: dict[str, list[dict]]) -> list[float]:
    runs = tables.get("image_runs", [])
    return _paired(_by(runs, "sc"), _by(runs, "float"), "live_weights", lambda x, y: x / y)


def _vs_float(method: str, column: str = "test_acc") -> Measure:
    def measure(tables: dict[str, list[dict]]) -> list[float]:
        runs = tables.get("image_runs", [])
        return _paired(_by(runs, method), _by(runs, "float"), column)
    return measure


def _at_point(method: str, column: str, fallback: Measure, key: str = "op_runs") -> Measure:
    """Per seed, ``column`` of ``method``'s run at the SGSC paper's operating point
    (08_operating_point's table ``key``: against the float of its seed); ``fallback``
    without that table."""
    def measure(tables: dict[str, list[dict]]) -> list[float]:
        rows = tables.get(key, [])
        if not rows:
            return fallback(tables)
        return [r[column] for r in sorted(rows, key=lambda r: r["seed"])
                if r["method"] == method and r.get(column) is not None]
    return measure


def _point_vs_sc(tables: dict[str, list[dict]]) -> list[float]:
    """Per seed: sgsc minus sc test accuracy, both at the SGSC paper's operating point."""
    rows = tables.get("op_runs", [])
    return _paired(_by(rows, "sgsc"), _by(rows, "sc"), "test_acc")


def _fraction_of_float(method: str, key: str = "image_runs") -> Measure:
    """Per seed: ``method``'s file size over the float model's of the same seed."""
    def measure(tables: dict[str, list[dict]]) -> list[float]:
        runs = tables.get(key, [])
        return _paired(_by(runs, method), _by(runs, "float"), "storage_bytes",
                       lambda x, y: x / y)
    return measure


def _study(tables: dict[str, list[dict]], **match) -> list[dict]:
    """01's study rows that are not tuning runs (and match the given columns)."""
    return [r for r in tables.get("study_runs", []) if not r.get("tuning")
            and all(r.get(k) == v for k, v in match.items())]


def _matched(metric: str, method: str = "sgsc") -> Measure:
    """``method`` - sc at matched size, per seed, at the default gamma (01's study)."""
    def measure(tables: dict[str, list[dict]]) -> list[float]:
        rows = [r for r in _study(tables) if r["method"] == "sc"
                or (r["method"] == method and r["default_gamma"])]
        pairs = compare.matched_differences(rows, method, "sc", metric=metric)
        return [p["difference"] for p in pairs if p["difference"] is not None]
    return measure


def _matched_fraction(method: str) -> Measure:
    """Per seed: the size of ``method``'s default-gamma run (01's study) over the float's."""
    def measure(tables: dict[str, list[dict]]) -> list[float]:
        floats = _by(tables.get("image_runs", []), "float")
        runs = {r["seed"]: r for r in _study(tables, method=method, default_gamma=True)}
        return _paired(runs, floats, "storage_bytes", lambda x, y: x / y)
    return measure


def _variance_at_matched_size(tables: dict[str, list[dict]]) -> list[float]:
    """Per gamma of sgsc: std over seeds of sgsc's test accuracy minus the std of sc's at
    the same sizes (interpolated on each seed's sc frontier)."""
    rows = [r for r in _study(tables) if r["method"] in ("sc", "sgsc")]
    out = []
    for gamma in sorted({r["gamma"] for r in rows if r["method"] == "sgsc"}):
        subset = [r for r in rows if r["method"] == "sc" or r["gamma"] == gamma]
        pairs = [p for p in compare.matched_differences(subset, "sgsc", "sc")
                 if p["reference_value"] is not None]
        if len(pairs) > 1:
            sgsc_std = mean_std([p["value"] for p in pairs])[1]
            sc_std = mean_std([p["reference_value"] for p in pairs])[1]
            out.append(sgsc_std - sc_std)
    return out


def _text_loss_change(tables: dict[str, list[dict]]) -> list[float]:
    runs = tables.get("text_runs", [])
    return _paired(_by(runs, "sgsc"), _by(runs, "float"), "test_loss")


def _feedback_effect(tables: dict[str, list[dict]]) -> list[float]:
    """Per regime and seed of the regime study (06): the mean change of the validation
    loss over every attempted restore of its sgsc runs -- kept or rolled back, so that the
    measurement is not good by construction (a restore is kept only when it lowered the
    monitor loss)."""
    groups: dict[tuple, list[float]] = {}
    for r in tables.get("regime_runs", []):
        change = r.get("feedback_attempt_val_change")
        if r["method"] == "sgsc" and change is not None:
            groups.setdefault((r["regime"], r["seed"]), []).append(change)
    return [sum(v) / len(v) for _, v in sorted(groups.items())]


def _search(tables: dict[str, list[dict]], column: str, combine) -> list[float]:
    """CB-TPE against standard TPE, same seed and trial budget: on notebook 01's runs
    (MNIST in "paper") where the profile runs both there, else on notebook 04's race."""
    for key in ("image_search_runs", "search_runs"):
        runs = tables.get(key, [])
        pairs = _paired(_by(runs, "cbtpe"), _by(runs, "cbtpe-tpe"), column, combine)
        if pairs:
            return pairs
    return []


SIXTY = ("the SGSC paper: a model kept at about 60 % of the float size, against a float "
         "MNIST model of 98.6 %")
OPTUNA = ("standard TPE is Optuna's TPESampler at the same trial budget, not the paper's "
          "comparators")
CLAIMS = (
    Claim("sgsc-accuracy-vs-float", SGSC,
          "\u201cup to a 2.5 % enhancement in test accuracy relative to the original "
          "unquantized models\u201d, \u201cmaintaining 60 % of the initial model size\u201d",
          "sgsc minus float test accuracy, same seed: at the paper's operating point where "
          "08_operating_point ran (a float trained one epoch; sgsc at 20 bits, no size "
          "term), else sgsc at its default gamma (see at_operating_point)",
          0.0, "above", _at_point("sgsc", "test_acc_minus_float", _vs_float("sgsc")), 0.005,
          SIXTY, _at_point("sgsc", "float_fraction", _fraction_of_float("sgsc")), 0.6),
    Claim("sgsc-vs-sc-at-point", SGSC, "the same gain, owed to safety guidance",
          "sgsc minus sc test accuracy at the paper's operating point, same seed (both from "
          "the same briefly trained float, at 20 bits, no size term: 08_operating_point)",
          0.0, "above", _point_vs_sc, 0.005, SIXTY,
          _at_point("sc", "float_fraction", lambda t: []), 0.6),
    Claim("ptq16-vs-float", SGSC, "the same claim, measured on a model that is not sgsc: "
          "uniform PTQ at 16 bits, the quantized model here nearest 60 % of the float size",
          "uniform PTQ at 16 bits minus float test accuracy, same seed (not sgsc)",
          0.0, "above", _vs_float("uniform-ptq-16"), 0.005, SIXTY,
          _fraction_of_float("uniform-ptq-16"), 0.6),
    Claim("sgsc-vs-sc-matched", SGSC, "safety guidance keeps the critical examples, so the "
          "compressed model is better than plain self-compression",
          "sgsc minus sc test accuracy at sgsc's size (sc interpolated on its frontier), "
          "same seed (01's study; the regime study's endpoint is the primary test)",
          0.0, "above", _matched("test_acc"), 0.005, "no size stated",
          _matched_fraction("sgsc")),
    Claim("sgsc-worst-class-matched", SGSC, "the same, for the hardest class",
          "sgsc minus sc worst-class test accuracy at sgsc's size, same seed", 0.0, "above",
          _matched("worst_class_acc"), 0.005, "no size stated", _matched_fraction("sgsc")),
    Claim("sgsc-variance", SGSC, "\u201creduces variance and eliminates parameter noise\u201d",
          "per gamma: std over seeds of sgsc's test accuracy minus sc's at the same sizes",
          0.0, "below", _variance_at_matched_size, 0.002, "no size stated"),
    Claim("sgsc-feedback", SGSC, "a feedback loop \u201crestores precision of the affected "
          "components when [the preservation set's] performance drops\u201d",
          "per regime and seed of the regime study: mean change of the validation loss over "
          "every attempted restore of its sgsc runs, kept or rolled back (negative: "
          "restores help)", 0.0, "below", _feedback_effect, 0.01, "no size stated"),
    Claim("sc-feedback-vs-sc-matched", SGSC, "the same feedback loop, by its effect on the "
          "compressed model", "sc with the feedback alone (sc-feedback) minus sc test "
          "accuracy at sc-feedback's size, same seed (01's study)", 0.0, "above",
          _matched("test_acc", "sc-feedback"), 0.005, "no size stated",
          _matched_fraction("sc-feedback")),
    Claim("sgsc-text-loss", SGSC, "the character model's test loss falls, 1.8 \u2192 1.6",
          "sgsc minus float test loss (nats per character), same seed: at the paper's "
          "operating point where 08_operating_point ran (the names float of "
          "02_char_transformer; sgsc at 20 bits, no size term), else 02's sgsc at its "
          "default gamma (see at_operating_point)", 0.0, "below",
          _at_point("sgsc", "test_loss_minus_float", _text_loss_change, "op_text_runs"),
          0.02, "the SGSC paper: the transformer at about 60 % of its float size",
          _at_point("sgsc", "float_fraction", _fraction_of_float("sgsc", "text_runs"),
                    "op_text_runs"), 0.6),
    Claim("scnn-accuracy", SCNN, "\u201cfloating-point accuracy with about 3 % of the bits "
          "and 18 % of the weights\u201d",
          "sc minus float test accuracy, same seed (within half a point counts as float "
          "accuracy)", -0.005, "above", _vs_float("sc"), 0.005,
          "SCNN: about 3 % of the float bits", _fraction_of_float("sc"), 0.03),
    Claim("scnn-bits", SCNN, "\u201cabout 3 % of the bits\u201d",
          "sc packed file size / float32 size, same seed", 0.03, "below",
          _float_fraction_bits, 0.005, "SCNN: about 3 % of the float bits",
          _fraction_of_float("sc"), 0.03),
    Claim("scnn-weights", SCNN, "\u201c18 % of the weights\u201d",
          "sc weights left / float weights, same seed", 0.18, "below",
          _float_fraction_weights, 0.02, "SCNN: about 3 % of the float bits",
          _fraction_of_float("sc"), 0.03),
    Claim("cbtpe-smaller", CBTPE, "\u201cabout 20 % smaller models at no accuracy loss\u201d",
          "1 - CB-TPE size / standard TPE size, same seed and trial budget (notebook "
          f"01's runs, MNIST in paper; else 04's race); {OPTUNA}", 0.2, "above",
          lambda t: _search(t, "storage_bytes", lambda a, b: 1 - a / b), 0.05,
          "CB-TPE against the paper's own baselines"),
    Claim("cbtpe-no-loss", CBTPE, "\u201cat no accuracy loss\u201d",
          "CB-TPE minus standard TPE test accuracy, same seed (within half a point; "
          f"notebook 01's runs, MNIST in paper; else 04's race); {OPTUNA}",
          -0.005, "above", lambda t: _search(t, "test_acc", lambda a, b: a - b), 0.005,
          "CB-TPE against the paper's own baselines"),
    Claim("cbtpe-faster", CBTPE, "search \u201cabout 12\u00d7 faster\u201d",
          "standard TPE search time / CB-TPE search time, same seed and trial budget "
          f"(notebook 01's runs, MNIST in paper; else 04's race); {OPTUNA}",
          12.0, "above", lambda t: _search(t, "search_s", lambda a, b: b / a), 1.0,
          "CB-TPE against the paper's own baselines"),
)

ALPHA = 0.05
POWER = 0.8
OPERATING_TOLERANCE = 0.5  # a measured size within half the paper's fraction either way


def _at_operating_point(fraction: float | None, paper: float | None) -> str | None:
    """"yes" when the measured size fraction is within :data:`OPERATING_TOLERANCE` of the
    paper's (relative), "no" otherwise, None when the paper states none or nothing was
    measured."""
    if fraction is None or paper is None:
        return None
    return "yes" if abs(fraction - paper) <= OPERATING_TOLERANCE * paper else "no"


def assess_claims(tables: dict[str, list[dict]]) -> list[dict]:
    """The claims table: quote, measurement, operating point (the paper's, the measured
    size fraction and whether they agree), n, mean, 95 % CI, the t-test p against the
    claimed value and its Holm adjustment across the claims, the verdict, and -- for
    inconclusive rows only -- the seeds that would find the stated smallest effect."""
    rows = []
    for claim in CLAIMS:
        values = [v for v in claim.measure(tables) if v is not None and math.isfinite(v)]
        interval = compare.t_interval(values)
        fractions = claim.size_fraction(tables) if claim.size_fraction else []
        fraction = mean_std(fractions)[0] if fractions else None
        rows.append({"id": claim.id, "source": claim.source, "quote": claim.quote,
                     "measurement": claim.measurement,
                     "operating_point": claim.operating_point,
                     "size_fraction": fraction, "paper_fraction": claim.paper_fraction,
                     "at_operating_point": _at_operating_point(fraction, claim.paper_fraction),
                     "n": interval["n"], "mean": interval["mean"], "std": interval["std"],
                     "ci_low": interval["ci_low"], "ci_high": interval["ci_high"],
                     "confidence": compare.CONFIDENCE, "claimed": claim.claimed,
                     "side": claim.side,
                     "p": compare.t_test_p([v - claim.claimed for v in values]),
                     "smallest_effect": claim.smallest_effect})
    adjusted = compare.holm({r["id"]: r["p"] for r in rows})
    for row, claim in zip(rows, CLAIMS, strict=True):
        row["holm_p"] = adjusted[row["id"]]
        row["verdict"] = _verdict(row)
        row["seeds_to_resolve"] = (compare.seeds_for_power(row["std"], claim.smallest_effect,
                                                           ALPHA, POWER)
                                   if row["verdict"] == "inconclusive" else None)
    return rows


def _verdict(row: dict) -> str:
    if row["n"] == 0:
        return "not measured"
    if row["holm_p"] is None or row["holm_p"] >= ALPHA:
        return "inconclusive"
    above = row["mean"] > row["claimed"]
    return "supported" if above == (row["side"] == "above") else "refuted"


TABLES = {"image_runs": "01_mnist_cnn__runs", "study_runs": "01_mnist_cnn__study_runs",
          "text_runs": "02_char_transformer__runs",
          "text_study_runs": "02_char_transformer__frontier_runs", "sweep_runs": "03_sweeps__runs",
          "image_search_runs": "01_mnist_cnn__search_runs", "search_runs": "04_cbtpe_search__runs",
          "regime_runs": "06_regimes__runs", "regime_all_runs": "06_regimes__all_runs",
          "file_runs": "07_file_budget__runs", "file_smallest": "07_file_budget__smallest",
          "op_runs": "08_operating_point__runs",
          "op_text_runs": "08_operating_point__text_runs"}
# each notebook's runs: every table that lists some (a run in two is counted once)
COST_TABLES = {"01_mnist_cnn": ("study_runs",),
               "02_char_transformer": ("text_runs", "text_study_runs"),
               "03_sweeps": ("sweep_runs",), "04_cbtpe_search": ("search_runs",),
               "06_regimes": ("regime_all_runs",), "07_file_budget": ("file_runs",),
               "08_operating_point": ("op_runs", "op_text_runs")}


def compute_cost(tables: dict[str, list[dict]], peak_gflops: float | None = None,
                 peaks: dict[str, float] | None = None) -> list[dict]:
    """What the profile's results cost to train from scratch: per notebook, its distinct
    runs (by folder; a run shared by two notebooks is counted once, where first seen),
    their training core-seconds (``train_s``: each run's own, summed over resumes) and
    training FLOPs (``train_flops``: 6 x forward MACs x examples, as each network shrank),
    and the total over all notebooks.  ``floor_s`` is the time those FLOPs need at a
    machine's matmul peak (GFLOP/s on one core) and ``vs_floor`` the core-seconds over
    it, for the runs that recorded their FLOPs: a notebook's runs at the peak of the
    machine that last ran it (``peaks``, from :func:`recorded_peaks`: the one that
    trained them, unless it reopened runs trained elsewhere, whose own peak no run
    records), else at ``peak_gflops`` (this machine's).  The total's floor is the sum of the
    notebooks' floors, its ``peak_gflops`` the rate that sum implies."""
    runs_of: dict[str, list[dict]] = {notebook: [] for notebook in COST_TABLES}
    for notebook, row in _distinct_runs(tables):
        runs_of[notebook].append(row)
    peaks = peaks or {}
    rows = [_cost_row(notebook, members, peaks.get(notebook, peak_gflops))
            for notebook, members in runs_of.items()]
    rows.append(_total_row(rows, [r for members in runs_of.values() for r in members]))
    return rows


def recorded_peaks(report_dir: str | os.PathLike[str]) -> dict[str, float]:
    """Per notebook of :data:`COST_TABLES`, the matmul peak (GFLOP/s) of the machine it
    last ran on, as its ``<notebook>__run.json`` recorded it (absent for notebooks run
    before peaks were recorded)."""
    peaks = {}
    for notebook in COST_TABLES:
        path = Path(report_dir) / METRICS / f"{notebook}__run.json"
        if path.exists():
            peak = (json.loads(path.read_text()).get("hardware") or {}).get("peak_gflops")
            if peak:
                peaks[notebook] = float(peak)
    return peaks


def cost_by_method(tables: dict[str, list[dict]], peak_gflops: float | None,
                   peaks: dict[str, float] | None = None) -> list[dict]:
    """Where the time above the FLOP floor goes: per notebook and method, the distinct runs
    that recorded their FLOPs, their core-seconds against the floor (as in
    :func:`compute_cost`, a notebook's at its own machine's peak where recorded), the
    seconds above it, and ``share``: that group's part of all the seconds above the floor
    (None without a peak)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for notebook, row in _distinct_runs(tables):
        if row.get("train_flops") is not None:
            groups.setdefault((notebook, row.get("method", "?")), []).append(row)
    rows = []
    peaks = peaks or {}
    for (notebook, method), members in sorted(groups.items()):
        cost = _cost_row(notebook, members, peaks.get(notebook, peak_gflops))
        above = None if cost["floor_s"] is None else cost["train_s"] - cost["floor_s"]
        rows.append({"notebook": notebook, "method": method, "runs": cost["runs"],
                     "train_s": cost["train_s"], "floor_s": cost["floor_s"],
                     "vs_floor": cost["vs_floor"],
                     "above_floor_s": None if above is None else round(above, 1)})
    total = sum(r["above_floor_s"] or 0.0 for r in rows)
    for r in rows:
        r["share"] = round(r["above_floor_s"] / total, 4) if total and \
            r["above_floor_s"] is not None else None
    return rows


def _distinct_runs(tables: dict[str, list[dict]]) -> Iterator[tuple[str, dict]]:
    """(notebook, run row) once per run with a recorded ``train_s``: a run by its folder,
    less the ``..`` a notebook's working directory puts before it (``runs/paper/mnist/x``
    from the checkout is ``../runs/paper/mnist/x`` from notebooks/) -- while runs of the
    same settings in two studies' folders (06's ``digits/``, 04's ``search/digits/``)
    were trained twice and count twice; a run in two notebooks' tables counts where first
    seen."""
    seen: set = set()
    for notebook, keys in COST_TABLES.items():
        for row in (row for key in keys for row in tables.get(key, [])):
            folder = (tuple(p for p in Path(row["run_dir"]).parts if p != "..")
                      if row.get("run_dir") else None)
            if folder is None or folder in seen or row.get("train_s") is None:
                continue
            seen.add(folder)
            yield notebook, row


def _cost_row(notebook: str, runs: Sequence[dict], peak_gflops: float | None) -> dict:
    seconds = sum(float(r["train_s"]) for r in runs)
    counted = [r for r in runs if r.get("train_flops") is not None]
    counted_seconds = sum(float(r["train_s"]) for r in counted)
    flops = sum(float(r["train_flops"]) for r in counted)
    floor = flops / (peak_gflops * 1e9) if peak_gflops and flops else None
    return {"notebook": notebook, "runs": len(runs), "train_s": round(seconds, 1),
            "longest_run_s": round(max((float(r["train_s"]) for r in runs), default=0.0), 1),
            "runs_with_flops": len(counted), "train_s_with_flops": round(counted_seconds, 1),
            "train_flops": flops, "peak_gflops": peak_gflops,
            "floor_s": None if floor is None else round(floor, 1),
            "vs_floor": None if not floor else round(counted_seconds / floor, 2)}


def _total_row(rows: Sequence[dict], runs: Sequence[dict]) -> dict:
    """The total over the notebooks' cost rows: its floor is their floors' sum."""
    total = _cost_row("all", runs, None)
    floors = [r["floor_s"] for r in rows if r["floor_s"] is not None]
    if floors and len(floors) == sum(1 for r in rows if r["train_flops"]):
        floor = sum(floors)
        total |= {"floor_s": round(floor, 1),
                  "peak_gflops": total["train_flops"] / floor / 1e9,
                  "vs_floor": round(total["train_s_with_flops"] / floor, 2)}
    return total


def claim_tables(report_dir: str | os.PathLike[str]) -> dict[str, list[dict]]:
    """The tables :func:`assess_claims` reads, from a report folder (absent: empty)."""
    folder = Path(report_dir) / METRICS
    return {key: load_table(report_dir, name) if (folder / f"{name}.json").exists() else []
            for key, name in TABLES.items()}


# ----------------------------------------------------------------------------- targets


def _column(rows: Sequence[dict], method: str, column: str) -> list[float]:
    return [float(r[column]) for r in rows if r["method"] == method
            and r.get(column) is not None]


def size_at_accuracy(rows: Sequence[dict], target: float = 0.99) -> list[dict]:
    """Per method (01 runs): mean test accuracy and packed size over seeds, whether the
    mean reaches ``target``, and which of those that do is the smallest."""
    table = []
    for method in dict.fromkeys(r["method"] for r in rows):
        members = [r for r in rows if r["method"] == method]
        acc, acc_std = mean_std(_column(members, method, "test_acc"))
        size, size_std = mean_std(_column(members, method, "storage_bytes"))
        table.append({"method": method, "n": len(members), "test_acc_mean": acc,
                      "test_acc_std": acc_std, "storage_bytes_mean": size,
                      "storage_bytes_std": size_std, "target": target,
                      "reaches_target": acc is not None and acc >= target})
    sizes = [r["storage_bytes_mean"] for r in table if r["reaches_target"]]
    for row in table:
        row["smallest_at_target"] = bool(sizes) and row["reaches_target"] and \
            row["storage_bytes_mean"] == min(sizes)
    return table


# The project's own targets (DEVELOPERS.md): what a compressed model must reach to count.
IMAGE_TARGET = {"test_acc": 0.99, "storage_bytes": 3_000, "entropy_coded_bytes": 1_500}
TEXT_TARGET = {"test_loss_rise": 0.02, "float_fraction": 0.05}


def project_targets(tables: dict[str, list[dict]]) -> list[dict]:
    """Per compressed method and gamma, mean ± std over seeds against the project's targets:
    image data -- test accuracy >= 99.0 % in a packed file <= 3,000 bytes (<= 1,500
    entropy-coded); text -- test loss within 0.02 nats of float at <= 5 % of its bits.

    Every gamma of the studies' frontiers (``study_runs``, ``text_study_runs``; tuning
    runs left out) is a row of its own, so the table shows how close each operating point
    comes; without those tables, the main runs (``image_runs``, ``text_runs``).  Where
    07_file_budget ran (``file_smallest``), its inference files are the image rows: every
    model of its frontiers, packed and at its smallest entropy coding."""
    image = [r for r in tables.get("study_runs") or tables.get("image_runs", [])
             if not r.get("tuning")]
    study = tables.get("text_study_runs")  # rise and size against the same seed's float
    text = (compare_to_float(study, score="test_loss", lower_is_better=True) if study
            else tables.get("text_runs", []))
    rows = _file_targets(tables.get("file_smallest", []))
    if rows:  # 07's inference files stand for the image target
        image = []
    for method in ("sc", "sgsc"):
        for gamma, members in _by_gamma(image, method):
            stats = {k: mean_std(_column(members, method, k)) for k in IMAGE_TARGET}
            means = {k: v[0] for k, v in stats.items()}
            met = _image_target_met(means["test_acc"], means["storage_bytes"],
                                    means["test_acc"], means["entropy_coded_bytes"])
            rows.append({"data": members[0].get("data", "mnist"), "method": method,
                         "gamma": gamma, "n": len(members),
                         **{f"{k}_mean": v[0] for k, v in stats.items()},
                         **{f"{k}_std": v[1] for k, v in stats.items()}, **met})
        for gamma, members in _by_gamma(text, method):
            rise, rise_std = mean_std(_column(members, method, "test_loss_rise"))
            fraction, fraction_std = mean_std([1 / c for c in _column(members, method,
                                                                       "compression") if c])
            met = rise is not None and fraction is not None and \
                rise <= TEXT_TARGET["test_loss_rise"] and \
                fraction <= TEXT_TARGET["float_fraction"]
            rows.append({"data": members[0].get("data", "names"), "method": method,
                         "gamma": gamma, "n": len(members),
                         "test_loss_rise_mean": rise, "test_loss_rise_std": rise_std,
                         "float_fraction_mean": fraction, "float_fraction_std": fraction_std,
                         "met": met})
    return rows


def _file_targets(smallest: Sequence[dict]) -> list[dict]:
    """The image target from 07_file_budget's table (:func:`sgsc.experiments.studies.
    smallest_at`): per method, budget and gamma, the packed file and the smallest
    entropy-coded one (a grid or narrowed file only where it classifies as its exact one
    does), with the test accuracy of each, the packed file's entropy floor (its codes at
    their empirical entropy), and whether both meet the target."""
    rows = []
    for (method, epochs, gamma), variants in encodings_by_model(smallest).items():
        packed = variants.get("packed")
        entropy = smallest_coded(variants.values())
        if packed is None:
            continue
        acc = packed["test_acc_mean"]
        # a model missing seeds meets nothing (smallest_coded leaves its coded files out)
        met = _image_target_met(acc if packed.get("complete", True) else None,
                                packed["file_bytes_mean"],
                                entropy and entropy["test_acc_mean"],
                                entropy and entropy["file_bytes_mean"])
        rows.append({"data": "mnist", "method": method, "epochs": epochs, "gamma": gamma,
                     "n": packed["seeds"], "test_acc_mean": acc,
                     "test_acc_std": packed["test_acc_std"],
                     "storage_bytes_mean": packed["file_bytes_mean"],
                     "storage_bytes_std": packed["file_bytes_std"],
                     "entropy_coded_bytes_mean": entropy and entropy["file_bytes_mean"],
                     "entropy_coded_bytes_std": entropy and entropy["file_bytes_std"],
                     "entropy_coding": entropy and entropy["variant"],
                     "entropy_coded_test_acc_mean": entropy and entropy["test_acc_mean"],
                     # the floor of the coded file's own precision (a grid or narrowed
                     # file's floor is at that precision too)
                     "entropy_floor_bytes_mean": (entropy or packed).get(
                         "entropy_floor_bytes_mean"),
                     **met})
    return sorted(rows, key=lambda r: (r["method"], r["epochs"], r["gamma"]))


def encodings_by_model(smallest: Sequence[dict]) -> dict[tuple, dict[str, dict]]:
    """Rows of :func:`sgsc.experiments.studies.smallest_at` by model -- (method, epochs,
    gamma) -- and within it by encoding (``variant``)."""
    models: dict[tuple, dict[str, dict]] = {}
    for r in smallest:
        models.setdefault((r["method"], r["epochs"], r["gamma"]), {})[r["variant"]] = r
    return models


def smallest_coded(rows: Iterable[dict]) -> dict | None:
    """Of one model's encodings (rows of :func:`sgsc.experiments.studies.smallest_at` with
    the same method, budget and gamma), the smallest entropy-coded one that counts: a
    grid or narrowed file only where it classifies as its exact one does; None if there is
    none."""
    coded = [r for r in rows if r["coding"] == "entropy" and r.get("allowed", True)
             and r.get("complete", True)]
    return min(coded, key=lambda r: r["file_bytes_mean"]) if coded else None


def at_least(accuracy: float | None, target: float) -> bool:
    """``accuracy >= target`` up to float rounding: a mean of three k/10,000 accuracies
    that is exactly 99.00 % can sum to 0.98999... in floating point."""
    return accuracy is not None and accuracy >= target - 1e-9


def _image_target_met(packed_acc: float | None, packed_bytes: float | None,
                      coded_acc: float | None, coded_bytes: float | None) -> dict[str, bool]:
    """Each half of the image target -- the packed file (<= 3,000 B) and the entropy-coded
    one (<= 1,500 B), each at >= 99.0 % test accuracy -- and ``met``: both."""
    def reaches(acc, size, limit):
        return size is not None and at_least(acc, IMAGE_TARGET["test_acc"]) and size <= limit

    packed = reaches(packed_acc, packed_bytes, IMAGE_TARGET["storage_bytes"])
    coded = reaches(coded_acc, coded_bytes, IMAGE_TARGET["entropy_coded_bytes"])
    return {"met_packed": packed, "met_coded": coded, "met": packed and coded}


def _gamma(row: dict) -> float | None:
    return row["gamma"] if "gamma" in row else (row.get("params") or {}).get("gamma")


def _by_gamma(rows: Sequence[dict], method: str) -> list[tuple[float | None, list[dict]]]:
    """``method``'s rows grouped by gamma, in increasing gamma (unknown gamma first)."""
    groups: dict[float | None, list[dict]] = {}
    for r in rows:
        if r["method"] == method:
            groups.setdefault(_gamma(r), []).append(r)
    return sorted(groups.items(), key=lambda kv: (kv[0] is not None, kv[0] or 0.0))
