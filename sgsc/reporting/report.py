"""Metrics files, provenance and the HTML report of a profile.

The notebooks in ``notebooks/`` write everything they measure through this module
(their parameters are checked by :mod:`sgsc.experiments.profiles`):

* :func:`save_table` / :func:`save_json` write ``<report_dir>/metrics/<name>.json`` (and
  ``.csv`` for tables); :func:`sgsc.experiments.provenance.save_run_info` records how a
  notebook ran (parameters, git SHA, package versions, data checksums, hardware);
* :func:`build_report` (``python -m sgsc report --profile P``) renders
  ``reports/<profile>/index.html`` from those files alone: every number on the page is
  read from a metrics file, and each carries the file and key it came from
  (``<span class="num" data-src="metrics/f.json#3/test_acc">``) so that tests can check it;
  strings, SHAs and checksums likewise (``span.val``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import html
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from sgsc.fileformat import atomic
from sgsc.reporting import compare

METRICS = "metrics"
FIGURES = "figures"
TIMINGS = "timings"  # metrics/timings.json, written by run_all.sh
TRAINED_ON = "report_trained_on"  # metrics/report_trained_on.json, written by build_report


# ----------------------------------------------------------------------------- metrics files


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None, numpy scalars become Python numbers."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def metrics_dir(report_dir: str | os.PathLike[str]) -> Path:
    """``<report_dir>/metrics``, created if missing."""
    path = Path(report_dir) / METRICS
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_json(obj: Any, report_dir: str | os.PathLike[str], name: str) -> Path:
    """Write ``obj`` to ``<report_dir>/metrics/<name>.json``."""
    path = metrics_dir(report_dir) / f"{name}.json"
    atomic.write_bytes(path, (json.dumps(_clean(obj), indent=1, default=str) + "\n").encode())
    return path


def save_table(rows: Any, report_dir: str | os.PathLike[str], name: str) -> list[Path]:
    """Write a table (list of flat dicts, or a pandas DataFrame) as JSON and CSV.

    Nested values (dicts, lists) are kept in the JSON and written as JSON text in the CSV.
    """
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    records = [_clean(dict(r)) for r in records]
    columns: list[str] = []
    for record in records:
        columns += [k for k in record if k not in columns]
    json_path = save_json(records, report_dir, name)
    csv_path = json_path.with_suffix(".csv")
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    for record in records:
        writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v
                         for k, v in record.items()})
    atomic.write_bytes(csv_path, text.getvalue().encode())
    return [json_path, csv_path]


def load_table(report_dir: str | os.PathLike[str], name: str) -> list[dict]:
    """Read back a table written by :func:`save_table`."""
    return json.loads((Path(report_dir) / METRICS / f"{name}.json").read_text())


def summarize(rows: Sequence[dict], by: str, columns: Sequence[str]) -> list[dict]:
    """Per value of ``by`` (in first-seen order): n and mean/std of each column.

    ``std`` is the sample standard deviation (ddof=1; 0 for a single row); rows where a
    column is missing or None are left out of that column's statistics.
    """
    groups: dict[Any, list[dict]] = {}
    for row in rows:
        groups.setdefault(row[by], []).append(row)
    table = []
    for key, members in groups.items():
        out: dict[str, Any] = {by: key, "n": len(members)}
        for column in columns:
            values = [float(r[column]) for r in members if r.get(column) is not None]
            mean, std = mean_std(values)
            out[f"{column}_mean"], out[f"{column}_std"] = mean, std
        table.append(out)
    return table


def compare_to_float(rows: Sequence[dict], *, size: str = "storage_bytes",
                     score: str = "test_acc", lower_is_better: bool = False) -> list[dict]:
    """Rows with ``compression`` (float size / size) and how much worse than the float
    run of the same data and seed the score is (None without one): ``<score>_drop``
    (float - score) for accuracies, ``<score>_rise`` (score - float) for losses."""
    reference = {(r["data"], r["seed"]): r for r in rows if r["method"] == "float"}
    column = f"{score}_rise" if lower_is_better else f"{score}_drop"
    out = []
    for row in rows:
        ref = reference.get((row["data"], row["seed"]))
        row = dict(row)
        row["compression"] = (ref[size] / row[size]) if ref and row.get(size) else None
        worse = None
        if ref and row.get(score) is not None:
            worse = row[score] - ref[score] if lower_is_better else ref[score] - row[score]
        row[column] = worse
        out.append(row)
    return out


def average(rows: Sequence[dict], by: str, columns: Sequence[str]) -> list[dict]:
    """Per value of ``by``: the mean of each column (a compact table for figures)."""
    return [{by: r[by], **{c: r[f"{c}_mean"] for c in columns}}
            for r in summarize(rows, by, columns)]


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value; None for none)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


# ----------------------------------------------------------------------------- provenance


def trained_on_table(report_dir: str | os.PathLike[str]) -> list[dict]:
    """Which CPUs (and thread counts) trained the runs behind a report: one row per
    ``(trained_on, threads)`` with its number of distinct runs, read from every metrics
    table whose rows are runs (they carry ``run_dir``)."""
    runs: dict[str, tuple[str, Any]] = {}
    for path in sorted((Path(report_dir) / METRICS).glob("*.json")):
        rows = _load(path)
        if not isinstance(rows, list):
            continue
        for row in rows:
            if isinstance(row, dict) and row.get("run_dir"):
                cpu = row.get("trained_on")
                runs[row["run_dir"]] = ("not recorded (older result)" if cpu is None
                                        else cpu or "nothing trained", row.get("threads"))
    counts: dict[tuple[str, Any], int] = {}
    for key in runs.values():
        counts[key] = counts.get(key, 0) + 1
    return [{"trained_on": cpu, "threads": threads, "runs": n}
            for (cpu, threads), n in sorted(counts.items(), key=lambda kv: -kv[1])]


# ----------------------------------------------------------------------------- answer in words

README_START = "<!-- results: written by python -m sgsc report --readme README.md -->"
README_END = "<!-- /results -->"


def _points(value: float) -> str:
    return f"{abs(value) * 100:.2f}"


def _gammas(rows: list[dict]) -> str:
    return ", ".join(f"{r['gamma']:g}" for r in rows)


def _signed(value: float, digits: int) -> str:
    """``value`` with its sign, a typographic minus for a negative one."""
    return f"{value:+.{digits}f}".replace("-", "−")


def _signed_points(value: float) -> str:
    return _signed(value * 100, 2)


def _listed(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _regime_headline(rows: list[dict], margin: str) -> str:
    """Where safety guidance helps, in the verdicts' words: the regimes where sgsc is more
    accurate (or "no data regime": the question asked), where less, where equivalent and
    where inconclusive."""
    def where(verdict: str) -> list[str]:
        return [r["regime"] for r in rows if r["verdict"] == verdict]

    clauses = ["more accurate than plain self-compression "
               + (f"on {_listed(where('sgsc better'))}" if where("sgsc better")
                  else "in no data regime")]
    if where("sgsc worse"):
        clauses.append(f"less accurate on {_listed(where('sgsc worse'))}")
    if where("equivalent"):
        clauses.append(f"equivalent within {margin} on {_listed(where('equivalent'))}")
    if where("inconclusive"):
        clauses.append(f"inconclusive on {_listed(where('inconclusive'))}")
    return "In a file of the same size, safety-guided self-compression is " + _listed(clauses)


def _regime_sentence(rows: list[dict]) -> str | None:
    """The regime study's primary endpoint in one sentence, every regime with its mean,
    interval and verdict (docs/PREREGISTRATION.md's words)."""
    decided = [r for r in rows if r.get("mean") is not None]
    if not decided:
        return None
    seeds = max(r["seeds"] for r in decided)
    unfinished = [r["regime"] for r in rows if r.get("verdict") == compare.NOT_FINISHED]
    parts = []
    for r in decided:
        images = f"{r['train_rows']:,} training images, " if r.get("train_rows") else ""
        interval = (f" [{_signed_points(r['ci_low'])}, {_signed_points(r['ci_high'])}]"
                    if r.get("ci_low") is not None else "")
        # the Holm p beside the interval: an interval clear of zero can still be
        # "inconclusive" once the four regimes are corrected for, and the reader should
        # see why (three digits: 0.0504 must not read as 0.05)
        holm = f", Holm p {r['holm_p']:.3g}" if r.get("holm_p") is not None else ""
        parts.append(f"{r['regime']} ({images}{_signed_points(r['mean'])} points"
                     f"{interval}{holm}): {r['verdict']}")
    margin = f"±{decided[0]['margin'] * 100:g} points"
    not_finished = (f" Not finished yet, so not computed: {', '.join(unfinished)} (Holm's "
                    f"correction counts {'it' if len(unfinished) == 1 else 'them'} with p = 1)."
                    if unfinished else "")
    # the interval is the plain t-interval; only the verdicts are corrected: say so, or an
    # interval clear of zero beside "inconclusive" reads as a contradiction
    return (_regime_headline(decided, margin) + " — sgsc − sc per regime (mean over "
            f"{seeds} seeds with its 95 % t-interval, not adjusted; each verdict from the "
            f"Holm-adjusted p across regimes and an equivalence test at {margin}): "
            + "; ".join(parts) + "." + not_finished)


def _file_sentence(rows: list[dict], target: float) -> str | None:
    """The smallest file at the accuracy target, packed and entropy coded, or that none
    reaches it; with the seeds' 95 % interval of each mean accuracy where the table has it,
    and a word when that interval reaches below the target."""
    if not rows:
        return None

    def best(coding: str, precisions: tuple[str, ...]) -> dict | None:
        hits = [r for r in rows if r["coding"] == coding and r["precision"] in precisions
                and r.get("reaches_target")]
        return min(hits, key=lambda r: r["file_bytes_mean"]) if hits else None

    def interval(row: dict) -> str:
        low, high = row.get("test_acc_ci_low"), row.get("test_acc_ci_high")
        return "" if low is None or high is None else f" [{low * 100:.2f}, {high * 100:.2f}]"

    def said(row: dict) -> str:
        words = {"entropy": "entropy coded", "grid": "with exponents on a grid",
                 "grid+entropy": "entropy coded with exponents on a grid",
                 "narrow": "narrowed", "narrow+entropy": "narrowed and entropy coded"}
        # the target is on the mean: say when a seed falls short of it
        short = (f", {row['seeds_at_target']} of {row['seeds']} seeds at or above it"
                 if row.get("seeds_at_target") not in (None, row["seeds"]) else "")
        return (f"{row['file_bytes_mean']:,.0f} bytes {words.get(row['variant'], row['variant'])} "
                f"({row['method']}, γ {row['gamma']:g}, {row['epochs']} epochs, "
                f"{row['test_acc_mean'] * 100:.2f} %{interval(row)}{short})")

    seeds = max(r["seeds"] for r in rows)
    # the targets table's rule (claims): the packed file exact, the coded one at any
    # precision that counts
    packed, coded = best("packed", ("exact",)), best("entropy", ("exact", "grid", "narrow"))
    if packed is None and coded is None:
        top = max(rows, key=lambda r: r["test_acc_mean"] or 0.0)
        return (f"No MNIST file reaches {target * 100:.1f} % test accuracy (mean of {seeds} "
                f"seeds); the most accurate is {said(top)}.")
    found = [r for r in (packed, coded) if r is not None]
    brackets = any(interval(r) for r in found)
    sentence = (f"The smallest MNIST files at {target * 100:.1f} % test accuracy (mean of "
                f"{seeds} seeds{', its 95 % interval over seeds in brackets' if brackets else ''}"
                f"): " + " and ".join(said(r) for r in found) + ".")
    unsure = [r for r in found if r.get("test_acc_ci_low") is not None
              and r["test_acc_ci_low"] < target]
    if unsure:
        which = ("both" if len(unsure) == 2 else
                 "the packed file's" if unsure[0] is packed else "the coded file's")
        sentence += (f" The interval of {which} reaches below {target * 100:.1f} %: the "
                     "target is met on the mean, not surely.")
    return sentence


def _seeds_together(missing: list[dict]) -> list[str]:
    """Rows of a missing list (:func:`sgsc.experiments.regimes.unfinished`), one entry per
    setting with its seeds ("mnist sc {...} (seeds 0, 1, 2)"), in first-seen order; a row
    without a setting (a whole study left out) is named by its ``request``."""
    groups: dict[str, list[str]] = {}
    for row in missing:
        if row.get("setting") is None:
            groups.setdefault(row["request"], [])
        else:
            groups.setdefault(row["setting"], []).append(str(row["seed"]))
    return [name if not seeds else
            f"{name} (seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)})"
            for name, seeds in groups.items()]


def _budget_sentence(rows: list[dict], target: float) -> str | None:
    """What longer compression budgets bought (07's budgets table): per method and gamma
    run at more than one budget, the file packed and entropy coded (its smallest coding
    that counts) and the test accuracy at each, with the seeds at the target where not
    every seed reaches it.  A budget still missing seeds is left out (the missing list
    names it): its means would be of other seeds than its neighbours'."""
    groups: dict[tuple, list[dict]] = {}
    for r in (r for r in rows if r.get("complete", True)):
        groups.setdefault((r["method"], r["gamma"]), []).append(r)
    clauses = []
    for (method, gamma), members in groups.items():
        if len(members) < 2:
            continue
        members = sorted(members, key=lambda r: r["epochs"])
        seeds = max(r["seeds"] for r in members)
        clauses.append(
            f"{method} at γ {gamma:g}, {_per_budget(members, 'epochs', str)} epochs: "
            f"{_per_budget(members, 'packed_bytes_mean', _bytes)} bytes packed "
            f"({_per_budget(members, 'coded_bytes_mean', _bytes)} entropy coded) at "
            f"{_per_budget(members, 'test_acc_mean', lambda v: f'{v * 100:.2f} %')} test "
            "accuracy"
            + (f" (seeds at {target * 100:.1f} % or above: "
               f"{_per_budget(members, 'seeds_at_target', str)} of {seeds})"
               if any(r.get("seeds_at_target") != r["seeds"] for r in members) else ""))
    if not clauses:
        return None
    return "Longer compression budgets: " + "; ".join(clauses) + "."


def _coder_sentence(rows: list[dict]) -> str | None:
    """What entropy coding saves against the packed file, per method (07's coder table):
    the mean share over its models with the range, and the entropy floor's mean share."""
    if not rows:
        return None

    def percent(value: float) -> str:
        return f"{value * 100:.1f}"

    parts = [f"{r['method']} by {percent(r['coded_saving_mean'])} % on average "
             f"({percent(r['coded_saving_min'])} to {percent(r['coded_saving_max'])} %; "
             f"{r['coded_at_target']} of {r['models']} models by a quarter or more; the "
             f"codes' entropy floor lies {percent(r['floor_saving_mean'])} % below packed)"
             for r in rows]
    return "Entropy coding shrinks the packed file of " + "; ".join(parts) + "."


def _per_budget(rows: list[dict], column: str, text: Callable[[Any], str]) -> str:
    """``column`` of each row in words, listed (a dash where a row has none)."""
    return _listed([text(r[column]) if r.get(column) is not None else "—" for r in rows])


def _bytes(value: float) -> str:
    return f"{value:,.0f}"


FILE_TARGET = 0.99  # 07_file_budget's accuracy target (the project's MNIST target)


def answer_sentences(report_dir: str | os.PathLike[str]) -> list[str]:
    """The study's answer in a few sentences, generated from the metrics, whichever way
    they fall: the regime study's primary endpoint (06_regimes), the smallest file at the
    target (07_file_budget), the MNIST matched-size table of 01 (until 06 has full
    MNIST's endpoint) and the character transformer at matched size (02)."""
    sentences = []
    endpoints = _table_if_any(report_dir, "06_regimes__endpoint")
    regime = _regime_sentence(endpoints)
    if regime is not None:
        sentences.append(regime)
    # 01's MNIST sentence stays until the regime study has full MNIST's endpoint
    full_mnist = any(r["regime"] == "mnist" and r.get("mean") is not None for r in endpoints)
    files = _file_sentence(_table_if_any(report_dir, "07_file_budget__smallest"), FILE_TARGET)
    if files is not None:
        left_out = _table_if_any(report_dir, "07_file_budget__missing")
        if left_out:
            files += (" Not yet among the models compared: "
                      + "; ".join(_seeds_together(left_out)) + ".")
        budgets = _budget_sentence(_table_if_any(report_dir, "07_file_budget__budgets"),
                                   FILE_TARGET)
        coder = _coder_sentence(_table_if_any(report_dir, "07_file_budget__coder"))
        sentences.append(" ".join(s for s in (files, budgets, coder) if s is not None))
    if not full_mnist:
        rows = [r for r in _table_if_any(report_dir, "01_mnist_cnn__matched_size")
                if r.get("method") == "sgsc"
                and r.get("metric") == "test_acc" and r.get("difference") is not None]
        worse = [r for r in rows if r["verdict"] != "inconclusive" and r["difference"] < 0]
        better = [r for r in rows if r["verdict"] != "inconclusive" and r["difference"] > 0]
        open_ = [r for r in rows if r["verdict"] == "inconclusive"]
        seeds = max((r["matched"] for r in rows), default=0)
        if rows:
            values = f"{len(rows)} value{'s' if len(rows) > 1 else ''} of γ"
            text = f"On MNIST ({seeds} seeds, {values}), "
            if not (worse or better):
                text += ("the 95 % interval of safety-guided minus plain self-compression in "
                         f"a file of the same size includes zero at every γ ({_gammas(open_)})")
            else:
                text += "safety-guided self-compression is"
                if worse:
                    diffs = sorted(-r["difference"] for r in worse)
                    text += (" less accurate than plain self-compression in a file of the "
                             "same size wherever the 95 % interval decides (γ "
                             f"{_gammas(worse)}: {_points(diffs[0])} to {_points(diffs[-1])} "
                             "points lower)")
                if better:
                    diffs = sorted(r["difference"] for r in better)
                    text += ((" and" if worse else " more accurate than plain "
                              "self-compression in a file of the same size") +
                             (" more accurate" if worse else "") +
                             f" at γ {_gammas(better)} ({_points(diffs[0])} to "
                             f"{_points(diffs[-1])} points higher)")
                elif worse:
                    text += " and more accurate nowhere"
                if open_:
                    text += f"; at γ {_gammas(open_)} the interval includes zero"
            sentences.append(text + ".")
    text = _transformer_sentence(_table_if_any(report_dir, "02_char_transformer__matched_size"))
    if text is not None:
        sentences.append(text)
    return sentences


def _transformer_sentence(table: list[dict]) -> str | None:
    """sgsc's test loss minus sc's at the same size on the character transformer, per
    gamma with its interval, and the gammas no sc run of that size could match."""
    sgsc = [r for r in table if r.get("method") == "sgsc"]
    rows = [r for r in sgsc if r.get("difference") is not None]
    if not rows:
        return None
    seeds = max(r["matched"] for r in rows)

    def loss(value: float) -> str:
        return _signed(value, 3)

    def side(row: dict) -> str:  # a higher loss is worse
        if row["verdict"] == "inconclusive":
            return "interval includes zero"
        return "sgsc worse" if row["difference"] > 0 else "sgsc better"

    parts = [f"{loss(r['difference'])} at γ {r['gamma']:g}"
             + (f" [{loss(r['ci_low'])}, {loss(r['ci_high'])}]"
                if r.get("ci_low") is not None else "") + f" ({side(r)})" for r in rows]
    unmatched = [r for r in sgsc if r.get("difference") is None]
    rest = (f"; at γ {_gammas(unmatched)} no sc run of the same size to compare with"
            if unmatched else "")
    return (f"On the character transformer (names; {seeds} seeds, 95 % t-intervals not "
            "adjusted across γ), sgsc's test loss minus sc's in a file of the same size, in "
            f"nats per character: {'; '.join(parts)}{rest}.")


COST_START = "<!-- cost: written by python -m sgsc report --readme README.md -->"
COST_END = "<!-- /cost -->"
WORKERS = (8, 16, 64)


def cost_sentence(report_dir: str | os.PathLike[str]) -> list[str]:
    """What regenerating a profile's results from scratch costs (05's compute table): its
    core-hours of training against the FLOP floor, and the wall time on 8, 16 and 64
    single-threaded workers if every worker stays busy -- never less than the longest run."""
    rows = {r["notebook"]: r for r in _table_if_any(report_dir, "05_paper_claims__compute")}
    total = rows.get("all")
    if not total or not total.get("train_s"):
        return []
    hours = total["train_s"] / 3600
    # the ratio covers only the runs that recorded their FLOPs (older code did not): say so
    # when that is not every run
    counted = total.get("runs_with_flops")
    which = ("" if counted in (None, total["runs"]) else
             f"; the {counted} runs that recorded their FLOPs")
    covered = (f", {total['train_s_with_flops'] / total['train_s'] * 100:.0f} % of the "
               "training time" if which and total.get("train_s_with_flops") else "")
    # each notebook's floor at the peak of the machine that ran it (05 records them)
    peaks = sorted({round(r["peak_gflops"]) for name, r in rows.items()
                    if name != "all" and r.get("train_flops") and r.get("peak_gflops")})
    peak = ("" if not peaks else f" ({peaks[0]} GFLOP/s on one core)" if len(peaks) == 1
            else f" ({peaks[0]} to {peaks[-1]} GFLOP/s on one core)")
    floor = (f" ({total['vs_floor']:.1f}× the time their FLOPs need at the matmul peak of "
             f"the machine each notebook ran on{peak}{which}{covered})"
             if total.get("vs_floor") else "")
    longest = total.get("longest_run_s") or 0.0  # absent from tables of older code
    walls = ", ".join(f"{max(total['train_s'] / n, longest) / 3600:.1f} h on {n}"
                      for n in WORKERS)
    bound = f" (the longest run alone takes {longest / 60:.0f} minutes)" if longest else ""
    unfinished = sorted({r["regime"] for r in _table_if_any(report_dir, "06_regimes__missing")})
    # a study reported before it finished: its missing runs cost what nobody measured yet
    untold = (f" The regime study's runs not finished yet ({', '.join(unfinished)}) are not "
              "counted." if unfinished else "")
    return [f"Training every run of the {Path(report_dir).name} profile from scratch takes "
            f"{hours:.1f} core-hours ({total['runs']:,} runs){floor}: about {walls} "
            f"single-threaded workers if each stays busy{bound}.{untold}"]


def _replace_block(text: str, start: str, end: str, lines: list[str], path: Path) -> str:
    if start not in text or end not in text:
        raise ValueError(f"{path} has no block for these sentences: put {start} and {end} "
                         "where they go")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + start + "\n" + "\n".join(lines) + "\n" + end + tail


def write_readme_results(readme: str | os.PathLike[str],
                         report_dir: str | os.PathLike[str]) -> bool:
    """Put :func:`answer_sentences` between the README's results markers, and
    :func:`cost_sentence` between its cost markers where it has them; returns whether the
    text changed.  A README without the results markers is an error naming them."""
    path = Path(readme)
    text = path.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{path} has no results block: put {README_START} and {README_END} "
                         "where the sentences go")
    new = _replace_block(text, README_START, README_END, answer_sentences(report_dir), path)
    if COST_START in new:
        new = _replace_block(new, COST_START, COST_END, cost_sentence(report_dir), path)
    if new != text:
        atomic.write_bytes(path, new.encode())
    return new != text


# ----------------------------------------------------------------------------- HTML


def fmt(value: Any) -> str:
    """How the report prints a number: ints with thousands separators, floats to 4
    significant digits (from 1,000 on, as whole numbers with separators), booleans as
    yes/no, None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= 1e3:
            return f"{value:,.0f}"
        text = f"{value:.4g}"
        return text if "e" not in text else f"{value:.2e}"
    return str(value)


def lookup(obj: Any, key: str) -> Any:
    """Follow ``a/0/b`` through dicts and lists (the ``#`` part of a ``data-src``)."""
    for part in key.split("/") if key else ():
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    return obj


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any, src: str) -> dict[str, str]:
    """One value with its source: numbers as ``span.num`` (text :func:`fmt`), everything
    else as ``span.val`` (strings as they are, lists and dicts as JSON); None and booleans
    are words, not data."""
    if _is_number(value):
        return {"kind": "num", "src": src, "text": fmt(value)}
    if value is None or isinstance(value, bool):
        return {"kind": "plain", "text": fmt(value)}
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return {"kind": "val", "src": src, "text": text}


def _paired(columns: list[str]) -> list[tuple[str, str | None]]:
    """Merge ``x_mean`` with ``x_std`` into one ``x`` column shown as mean ± std."""
    merged: list[tuple[str, str | None]] = []
    for column in columns:
        if column.endswith("_std") and f"{column[:-4]}_mean" in columns:
            continue
        std = f"{column[:-5]}_std" if column.endswith("_mean") else None
        merged.append((column, std if std in columns else None))
    return merged


def table_view(records: list[dict], file: str, max_rows: int = 40,
               prefix: str = "") -> dict[str, Any]:
    """A metrics table as the template draws it: ``file`` is its path relative to
    index.html and ``prefix`` the key of the table inside that file (empty: the file is the
    table).  Columns come from pandas (every key, in first-seen order)."""
    columns = [str(c) for c in pd.DataFrame.from_records(records).columns]
    pairs = _paired(columns)
    rows = []
    for i, record in enumerate(records[:max_rows]):
        row = []
        for column, std in pairs:
            spread = record.get(std) if std is not None else None
            row.append({"mean": _cell(record.get(column), f"{file}#{prefix}{i}/{column}"),
                        "std": None if spread is None
                        else _cell(spread, f"{file}#{prefix}{i}/{std}")})
        rows.append(row)
    # said in words: every number on the page must come from a metrics file
    return {"kind": "table", "header": [c[:-5] if s else c for c, s in pairs], "rows": rows,
            "cut": len(records) > max_rows}


def mapping_view(obj: dict, file: str, prefix: str = "") -> dict[str, Any]:
    """A (nested) dict as a two-column table, each value with its source."""
    items = []
    for key, value in obj.items():
        path = f"{prefix}{key}"
        items.append((str(key), mapping_view(value, file, path + "/") if isinstance(value, dict)
                      else _cell(value, f"{file}#{path}")))
    return {"kind": "mapping", "entries": items}


@functools.cache
def _template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True, trim_blocks=True, lstrip_blocks=True,
        undefined=jinja2.StrictUndefined)
    return environment.get_template("index.html.j2")


def render_table(records: list[dict], file: str, max_rows: int = 40, prefix: str = "") -> str:
    """:func:`table_view` rendered as HTML (the template's ``table`` macro)."""
    return str(_template().module.table(table_view(records, file, max_rows, prefix)))


def render_mapping(obj: dict, file: str, prefix: str = "") -> str:
    """:func:`mapping_view` rendered as HTML (the template's ``mapping`` macro)."""
    return str(_template().module.mapping(mapping_view(obj, file, prefix)))


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em;
       color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
span.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
p.answer { font-size: 1.1em; max-width: 50em; }
img { max-width: 100%; border: 1px solid #eee; }
figure { margin: 1em 0; }
.note { color: #666; font-size: 0.85em; }
code { font-size: 0.85em; }
"""


def _notebooks(report_dir: Path) -> list[str]:
    """Notebook stems that left metrics files (``<stem>__<table>.json``) or outputs."""
    stems = {p.name.split("__")[0] for p in (report_dir / METRICS).glob("*__*.json")}
    stems |= {p.stem for p in report_dir.glob("[0-9]*.ipynb")}
    return sorted(stems)


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def _table_if_any(report_dir: str | os.PathLike[str], stem: str) -> list[dict]:
    """A metrics table of the report, or no rows where its notebook has not written it."""
    exists = (Path(report_dir) / METRICS / f"{stem}.json").exists()
    return load_table(report_dir, stem) if exists else []


def _block(obj: Any, file: str) -> dict[str, Any]:
    """A metrics file's content as a table (a list of rows) or a mapping (a dict)."""
    if isinstance(obj, list) and all(isinstance(r, dict) for r in obj):
        return table_view(obj, file)
    if isinstance(obj, dict):
        return mapping_view(obj, file)
    return {"kind": "note", "text": f"{file} holds neither a table nor a mapping"}


def _figure(png: Path, caption: str | None = None) -> dict[str, Any]:
    svg = png.with_suffix(".svg")
    return {"png": f"{FIGURES}/{png.name}", "alt": png.stem, "caption": caption or png.stem,
            "svg": f"{FIGURES}/{svg.name}" if svg.exists() else None}


def _section(report_dir: Path, stem: str) -> dict[str, Any]:
    """Links, tables (summaries first: the headline numbers), figures and provenance of
    one notebook."""
    links = [{"href": name, "label": label} for name, label in
             ((f"{stem}.html", "executed notebook (HTML)"), (f"{stem}.ipynb", "notebook"))
             if (report_dir / name).exists()]
    paths = sorted((report_dir / METRICS).glob(f"{stem}__*.json"),
                   key=lambda p: (0 if "summary" in p.stem else 1, p.stem))
    tables = []
    for path in paths:
        table = path.stem.split("__", 1)[1]
        if table == "run":
            continue
        file = f"{METRICS}/{path.name}"
        tables.append({"title": table.replace("_", " "), "file": file,
                       "csv": f"{METRICS}/{path.stem}.csv"
                       if path.with_suffix(".csv").exists() else None,
                       "body": _block(_load(path), file)})
    figures = [_figure(png) for png in sorted((report_dir / FIGURES).glob(f"{stem}*.png"))]
    run = report_dir / METRICS / f"{stem}__run.json"
    provenance = None
    if run.exists():
        info, file = _load(run), f"{METRICS}/{run.name}"
        provenance = {"file": file,
                      "blocks": mapping_view({k: v for k, v in info.items() if k != "data"},
                                             file),
                      "data": table_view(info["data"], file, prefix="data/")
                      if info.get("data") else None}
    return {"stem": stem, "links": links, "tables": tables, "figures": figures,
            "provenance": provenance}


def _timings(report_dir: Path) -> dict[str, Any]:
    path = report_dir / METRICS / f"{TIMINGS}.json"
    if not path.exists():
        return {"kind": "note", "text": "no timings recorded (run_all.sh writes them)"}
    return _block(_load(path), f"{METRICS}/{path.name}")


# The first screen: the study's answer, before any detail (file stem, title, columns).
_MATCHED_COLUMNS = ("method", "gamma", "metric", "size_mean", "matched", "difference",
                    "ci_low", "ci_high", "confidence", "verdict", "seeds_to_resolve")
ANSWER = (
    ("06_regimes__endpoint", "When does safety guidance help? sgsc minus sc test accuracy in "
     "a file of the same size, per data regime (the pre-registered primary endpoint)",
     ("regime", "train_rows", "seeds", "mean", "ci_low", "ci_high", "t_p", "holm_p",
      "sign_flip_p", "equivalence_p", "margin", "verdict", "dominated", "sgsc_runs")),
    ("06_regimes__missing", "The regime study's runs not finished yet: nothing is computed "
     "from a regime with any of them missing", None),
    ("07_file_budget__missing", "Models the file study has not compared yet (not finished)",
     ("request",)),
    ("08_operating_point__missing", "Runs at the SGSC paper's operating point not finished "
     "yet (a claim row without them says where it was measured instead)", None),
    ("07_file_budget__best", "The smallest MNIST file at the target, per encoding "
     "(entropy_floor_bytes_mean: that model's packed file at the encoding's precision with "
     "its codes at their empirical entropy -- a coded file can lie below it, as the coder "
     "also codes the bit depths and may fit a model per row; a grid or narrowed encoding "
     "counts only where every seed's accuracy is unchanged)",
     ("variant", "method", "gamma", "epochs", "seeds", "file_bytes_mean", "file_bytes_std",
      "test_acc_mean", "test_acc_std", "entropy_floor_bytes_mean")),
    ("07_file_budget__budgets", "Does a longer compression budget buy size? Each method "
     "and γ trained longer, beside its shorter budgets where they ran: accuracy over the "
     "seeds, seeds at the target, the mean packed file and its smallest coding that counts",
     None),
    ("07_file_budget__coder", "What the entropy coder saves: per method, how far below its "
     "packed file each MNIST model's entropy-coded file and its entropy floor sit, as shares "
     "of the packed file (the file issue asks a quarter on sc's models; the floor is the "
     "codes' empirical entropy with the bit depths as packed, so a coder that also codes the "
     "depths or fits each row can go below it)", None),
    ("01_mnist_cnn__matched_size", "Safety guidance against plain self-compression at the "
     "same size: the difference and its confidence interval over seeds", _MATCHED_COLUMNS),
    ("02_char_transformer__matched_size", "The same on the character transformer: test "
     "loss at the same size (negative: sgsc's loss is lower)", _MATCHED_COLUMNS),
    ("05_paper_claims__claims", "The papers' claims: where each paper measured it, what was "
     "measured here, and the verdict after Holm's correction across the rows",
     ("source", "quote", "measurement", "operating_point", "size_fraction",
      "at_operating_point", "n", "mean", "ci_low", "ci_high", "side", "claimed", "holm_p",
      "verdict", "seeds_to_resolve")),
    ("05_paper_claims__targets", "This project's targets", None),
    ("05_paper_claims__compute", "Training cost from scratch (seconds of training)", None),
    ("05_paper_claims__compute_by_method", "Where the time above the FLOP floor goes: per "
     "notebook and method, core-seconds against the floor, the seconds above it and their "
     "share of all seconds above it", None),
)
ANSWER_FIGURES = (("06_regimes_answer", "sgsc − sc at equal size against the training "
                   "images of each regime, with its unadjusted t-interval and the equivalence "
                   "band; the digits regime is another data set (small images) with its own "
                   "network, placed on this axis by its training-set size alone"),
                  ("01_mnist_cnn_frontier", "MNIST: test accuracy against file size, every "
                   "method (sc and sgsc at several γ, mean over seeds)"),
                  ("02_char_transformer_frontier", "Names: test loss against file size"))
ANSWER_FILE = "report_answer"  # metrics/report_answer.json: the sentences, from the metrics


def _answer(report_dir: Path) -> dict[str, Any] | None:
    """The answer in words, the frontier figures, the equal-size tables, the claims, the
    targets and the cost; None when the report has none of them."""
    figures = [_figure(report_dir / FIGURES / f"{stem}.png", caption)
               for stem, caption in ANSWER_FIGURES
               if (report_dir / FIGURES / f"{stem}.png").exists()]
    tables = []
    for stem, title, columns in ANSWER:
        rows = _table_if_any(report_dir, stem)
        if not rows:  # not written, or e.g. no run of the regime study missing
            continue
        if columns is not None:
            frame = pd.DataFrame.from_records(rows)
            keep = [c for c in columns if c in frame.columns]
            rows = [{c: r.get(c) for c in keep if c in r} for r in rows]
        file = f"{METRICS}/{stem}.json"
        tables.append({"title": title, "file": file, "body": table_view(rows, file)})
    sentences = answer_sentences(report_dir)
    save_json({"sentences": sentences}, report_dir, ANSWER_FILE)
    if not (figures or tables or sentences):
        return None
    file = f"{METRICS}/{ANSWER_FILE}.json"
    return {"sentences": [_cell(s, f"{file}#sentences/{i}") for i, s in enumerate(sentences)],
            "figures": figures, "tables": tables}


def build_report(report_dir: str | os.PathLike[str], profile: str | None = None,
                 build: dict[str, Any] | None = None) -> Path:
    """Write ``<report_dir>/index.html`` from the metrics files there; return its path.

    Writes ``metrics/report.json`` first -- the profile, the build time and ``build``
    (what the caller knows of the process building the report: its git state and package
    versions, :func:`sgsc.experiments.provenance.build_info`) -- so that it, too, is shown
    from a file; likewise the table of the CPUs that trained the runs and the answer's
    sentences.  The page is ``templates/index.html.j2`` (Jinja2) filled with views of those
    files.
    """
    report_dir = Path(report_dir)
    if not (report_dir / METRICS).is_dir():
        raise FileNotFoundError(f"{report_dir / METRICS} does not exist: run the notebooks "
                                "first (./run_all.sh --profile ...)")
    profile = profile or report_dir.name
    save_json({"profile": profile,
               "built": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
               **(build or {})}, report_dir, "report")
    save_json(trained_on_table(report_dir), report_dir, TRAINED_ON)
    trained_on = f"{METRICS}/{TRAINED_ON}.json"
    page = _template().render(
        profile=profile, style=_STYLE, answer=_answer(report_dir),
        sections=[_section(report_dir, stem) for stem in _notebooks(report_dir)],
        build=mapping_view(_load(report_dir / METRICS / "report.json"),
                           f"{METRICS}/report.json"),
        trained_on=table_view(_load(report_dir / trained_on), trained_on),
        timings=_timings(report_dir))
    path = report_dir / "index.html"
    atomic.write_bytes(path, (page.rstrip() + "\n").encode())
    return path


# ----------------------------------------------------------------------------- browser check

_CHECKER = """<!DOCTYPE html><html><body>
<iframe id="page" src="report/index.html" style="width:1280px;height:900px"></iframe>
<script>
document.getElementById("page").onload = () => {
  const doc = document.getElementById("page").contentDocument;
  const images = [...doc.images];
  const done = () => {
    if (!images.every(i => i.complete)) { setTimeout(done, 50); return; }
    const out = document.createElement("pre");
    out.id = "result";
    out.textContent = JSON.stringify({
      title: doc.title, images: images.length, tables: doc.querySelectorAll("table").length,
      broken: images.filter(i => !(i.naturalWidth > 0)).map(i => i.getAttribute("src")),
      headings: [...doc.querySelectorAll("h2")].map(h => h.textContent)});
    document.body.appendChild(out);
  };
  done();
};
</script></body></html>"""


def check_in_browser(report_dir: str | os.PathLike[str], browser: str = "chromium",
                     timeout_s: float = 60) -> dict[str, Any]:
    """Open ``<report_dir>/index.html`` in a real (headless) browser over HTTP and report
    what rendered: ``title``, ``images``, ``tables``, ``headings`` and the ``broken``
    images (those that did not load).  Raises FileNotFoundError without the browser."""
    import functools
    import re
    import shutil
    import subprocess
    import tempfile
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class _QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # the server's log is not the report's
            pass

    executable = shutil.which(browser)
    if executable is None:
        raise FileNotFoundError(f"no {browser} on this machine (Debian: apt install chromium)")
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "report").symlink_to(Path(report_dir).resolve())
        (Path(root) / "check.html").write_text(_CHECKER)
        handler = functools.partial(_QuietHandler, directory=root)
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            done = subprocess.run(
                [executable, "--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", f"--user-data-dir={root}/profile",
                 "--virtual-time-budget=20000", "--dump-dom",
                 f"http://127.0.0.1:{server.server_port}/check.html"],
                capture_output=True, text=True, timeout=timeout_s)
        finally:
            server.shutdown()
    found = re.search(r'<pre id="result">(.*?)</pre>', done.stdout, re.S)
    if found is None:
        raise RuntimeError(f"the page did not finish rendering in {browser}: "
                           f"{done.stderr[-500:]}")
    return json.loads(html.unescape(found.group(1)))
