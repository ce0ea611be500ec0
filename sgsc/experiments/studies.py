"""The studies behind notebooks 01, 03 and 04: safety guidance against plain
self-compression, a one-at-a-time sweep, and a search race.

**Safety guidance** (``01_mnist_cnn``).  :func:`image_study` lists the runs the notebook
adds to its main grid: the ablation halves ``sc-pres`` and ``sc-feedback`` at the default
gamma, sc and sgsc at more gammas (a frontier each), and a few settings tried on one seed
and judged on validation (:func:`tuning_rows`).  :func:`study_rows` gives every run one
row with its gamma and worst-class accuracy; :func:`ablation_summary` compares the four
variants at the same gamma and :func:`matched_size` at the same size, against sc's
frontier of the same seed (:func:`sgsc.reporting.compare.matched_differences`), with a 95 %
confidence interval over seeds.

**Sweep** (``03_sweeps``).  The SGSC paper varies the initial bit depth, gamma, lambda,
batch size and learning rate.  A full product of those axes is thousands of runs, so
:func:`axis_grids` varies *one setting at a time* around the data set's defaults: one grid
at the defaults, plus one grid per axis holding that axis's other values.  Each grid is an
ordinary :class:`sgsc.experiments.sweep.Grid` (cached by key, run on Dask), so a rerun is free and a
``full`` profile can hand the same study to a cluster.  :func:`sweep_rows` flattens the
outcomes into one row per run, labelled with the axis and value it tests, and
:func:`epoch_swing` measures how much a run's validation accuracy jumps between epochs --
the instability the preservation set is meant to damp.

**Search race** (``04_cbtpe_search``).  :func:`best_so_far` turns a CB-TPE search log
(``search.json`` of a ``cbtpe`` / ``cbtpe-tpe`` run) into best-objective-so-far curves
against trials and against training time; :func:`sgsc.experiments.baselines.cbtpe.objective` scores
any other compressed model -- a self-compression run -- the same way, so it lands on the
same axes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sgsc.core.tasks import evaluate
from sgsc.experiments import store, sweep
from sgsc.experiments.defaults import SAFETY_METHODS, train_config
from sgsc.fileformat import atomic
from sgsc.reporting import compare
from sgsc.reporting.claims import at_least, encodings_by_model, smallest_coded
from sgsc.reporting.report import mean_std, summarize

LAMBDA = "lambda_pres"  # only sgsc has a preservation loss to weigh
# The smallest matched-size difference worth finding, per metric: what an undecided row's
# seeds_to_resolve is planned for (half a point of accuracy; 0.02 nats of loss).
SMALLEST_EFFECT = {"test_acc": 0.005, "worst_class_acc": 0.005, "val_acc": 0.005,
                   "test_loss": 0.02, "val_loss": 0.02}


# ----------------------------------------------------------------------------- safety study


def image_study(profile: Any) -> dict[str, list[dict]]:
    """The runs ``01_mnist_cnn`` adds to its main grid, by part; each request is
    ``{"methods", "seeds", "overrides"}`` for :func:`sgsc.experiments.store.run_grid`.  The tuning
    runs change one setting of sgsc at a time, on the profile's tuning seeds."""
    seeds = list(profile.seeds)
    return {
        "ablation": [{"methods": list(profile.ablation_methods), "seeds": seeds,
                      "overrides": {}}],
        "frontier": frontier_requests(profile.frontier, seeds),
        "tuning": [{"methods": ["sgsc"], "seeds": list(profile.tuning_seeds or seeds),
                    "overrides": {setting: value}}
                   for setting, values in profile.tuning.items() for value in values],
    }


def text_study(profile: Any) -> dict[str, list[dict]]:
    """The runs ``02_char_transformer`` adds to its main grid: sc and sgsc at more gammas
    (``profile.text_frontier``), for the comparison of test loss at matched size."""
    return {"frontier": frontier_requests(profile.text_frontier, list(profile.text_seeds))}


def frontier_requests(frontier: dict[str, Sequence[float]], seeds: list[int]) -> list[dict]:
    """One run request per (method, gamma) of ``frontier`` (method: gammas), on ``seeds``."""
    return [{"methods": [method], "seeds": seeds, "overrides": {"gamma": gamma}}
            for method, gammas in frontier.items() for gamma in gammas]


def study_grids(parts: dict[str, list[dict]], data_name: str, out: str | os.PathLike,
                budget: dict[str, int | None], device: str = "auto") -> list[sweep.Grid]:
    """The same runs as :class:`sgsc.experiments.sweep.Grid` objects, to train them on Dask workers
    first (the notebook then finds every run in its folder)."""
    fixed = {k: v for k, v in {"epochs": budget.get("epochs"),
                               "float_epochs": budget.get("float_epochs")}.items()
             if v is not None}
    grids = []
    for requests in parts.values():
        for request in requests:
            grid = {k: [v] for k, v in request["overrides"].items()}
            grids.append(sweep.parse_grid({"data": data_name, "methods": request["methods"],
                                           "seeds": request["seeds"], "grid": grid,
                                           "fixed": fixed, "out": str(out),
                                           "device": device}))
    return grids


PARTS = ("main", "ablation", "frontier", "tuning", "text")


def profile_grids(profile: Any, out: str | os.PathLike, parts: Sequence[str] = PARTS,
                  device: str = "auto") -> list[sweep.Grid]:
    """The training runs of notebooks 01 and 02 for ``profile`` as sweep grids, so that
    they can be trained on parallel workers before the notebooks (which then find every
    run in its folder): ``main`` (01's methods), ``ablation``, ``frontier``, ``tuning``
    (01's safety study) and ``text`` (02's methods; left to the notebook when the profile
    changes the text model's shape, which a worker process would not see)."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    from sgsc.experiments.profiles import budget

    study = image_study(profile)
    study["main"] = [{"methods": list(profile.methods), "seeds": list(profile.seeds),
                      "overrides": {}}]
    grids = study_grids({name: study[name] for name in parts if name != "text"},
                        profile.image_data, out, budget(profile), device)
    if "text" in parts and not profile.text_model:
        text = {"text": [{"methods": list(profile.text_methods),
                          "seeds": list(profile.text_seeds), "overrides": {}}],
                **text_study(profile)}
        grids += study_grids(text, profile.text_data, out, budget(profile, "text"), device)
    return grids


# Methods whose size term gamma weighs (DiffQ's too: sgsc.experiments.baselines.diffq); the others
# (float, uniform, CB-TPE) have no gamma of their own.
GAMMA_METHODS = ("sc", "sc-rate", *SAFETY_METHODS, "diffq")


def study_rows(results: Sequence[dict], per_class: Sequence[dict],
               data_name: str) -> list[dict]:
    """One row per run (each run once): method, seed, gamma, the tuned settings, whether
    it is a tuning run (``tuning``: a setting other than its method's default) and at the
    default gamma (``default_gamma``), test and validation accuracy, worst-class test
    accuracy, size, and the feedback's effect."""
    worst = {row["run_dir"]: min(v for k, v in row.items() if k.startswith("class_"))
             for row in per_class}
    rows, seen = [], set()
    for r in results:
        if r.get("run_dir") in seen:
            continue
        seen.add(r.get("run_dir"))
        params = r.get("params", {})
        tuned = r["method"] in SAFETY_METHODS and any(
            params.get(s) != getattr(train_config(r["method"], data_name), s) for s in TUNED)
        weighs_gamma = r["method"] in GAMMA_METHODS
        rows.append({"method": r["method"], "data": r.get("data", data_name), "seed": r["seed"],
                     "gamma": params.get("gamma"),
                     "tuning": tuned, "default_gamma": not weighs_gamma or
                     params.get("gamma") == default_value(data_name, "gamma"),
                     "l1_weights": params.get("l1_weights"), "pres_bn": params.get("pres_bn"),
                     "val_acc": r.get("val_acc"), "test_acc": r.get("test_acc"),
                     "val_loss": r.get("val_loss"), "test_loss": r.get("test_loss"),
                     "worst_class_acc": worst.get(r.get("run_dir")),
                     "storage_bytes": r.get("storage_bytes"),
                     "entropy_coded_bytes": r.get("entropy_coded_bytes"),
                     "feedback_events": r.get("feedback_events"),
                     "feedback_bits": r.get("feedback_bits"),
                     "feedback_monitor_change": r.get("feedback_monitor_change"),
                     "train_s": r.get("train_s"), "run_dir": r.get("run_dir")})
    return rows


def at_defaults(rows: Sequence[dict], data_name: str, *, gamma: bool = False) -> list[dict]:
    """Rows of :func:`study_rows` that are not tuning runs; with ``gamma``, only those at
    the default gamma too (and the methods without one, such as float)."""
    return [r for r in rows if not r["tuning"] and (not gamma or r["default_gamma"])]


TUNED = ("l1_weights", "pres_bn")  # what the tuning runs vary


ABLATION_COLUMNS = ("test_acc", "worst_class_acc", "storage_bytes", "feedback_events",
                    "feedback_bits", "feedback_monitor_change")


def ablation_summary(rows: Sequence[dict], data_name: str,
                     methods: Sequence[str] = ("sc", "sc-pres", "sc-feedback", "sgsc")
                     ) -> list[dict]:
    """Mean and std over seeds of :data:`ABLATION_COLUMNS`, per method, at the default
    gamma (``<column>_std`` beside each ``<column>``)."""
    gamma = default_value(data_name, "gamma")
    chosen = at_defaults(rows, data_name, gamma=True)
    out = []
    for method in methods:
        mine = [r for r in chosen if r["method"] == method]
        if not mine:
            continue
        row = {"method": method, "gamma": gamma, "seeds": len(mine)}
        for column in ABLATION_COLUMNS:
            stats_ = compare.t_interval([r[column] for r in mine if r[column] is not None])
            row[column], row[f"{column}_std"] = stats_["mean"], stats_["std"]
        out.append(row)
    return out


def matched_size(rows: Sequence[dict], data_name: str, methods: Sequence[str],
                 reference: str = "sc", metrics: Sequence[str] = ("test_acc",
                                                                  "worst_class_acc"),
                 all_gammas: Sequence[str] = ("sgsc",), better: str = "above") -> list[dict]:
    """Each method's metric minus ``reference``'s at the same size and seed, with a 95 %
    t interval over seeds: one row per (method, gamma, metric).  Methods in
    ``all_gammas`` are compared at every gamma they ran; the others at the default.
    ``better`` is the side of 0 where the method wins: "above" for accuracy, "below" for
    a loss; the verdict is for "better than the reference at the same size"."""
    usable = at_defaults(rows, data_name)
    gamma0 = default_value(data_name, "gamma")
    out = []
    for method in methods:
        gammas = sorted({r["gamma"] for r in usable if r["method"] == method}
                        if method in all_gammas else {gamma0})
        for gamma in gammas:
            subset = [r for r in usable if r["method"] == reference
                      or (r["method"] == method and r["gamma"] == gamma)]
            for metric in metrics:
                pairs = compare.matched_differences(subset, method, reference,
                                                    metric=metric)
                diffs = [p["difference"] for p in pairs if p["difference"] is not None]
                interval = compare.t_interval(diffs)
                out.append({"method": method, "gamma": gamma, "metric": metric,
                            "size_mean": _mean([p["size"] for p in pairs]),
                            "runs": len(pairs), "matched": len(diffs),
                            "difference": interval["mean"], "std": interval["std"],
                            "ci_low": interval["ci_low"], "ci_high": interval["ci_high"],
                            "confidence": compare.CONFIDENCE,
                            "verdict": (verdict := compare.verdict(interval, 0.0, better)),
                            "smallest_effect": SMALLEST_EFFECT[metric],
                            "seeds_to_resolve": compare.seeds_for_power(
                                interval["std"], SMALLEST_EFFECT[metric])
                            if verdict == "inconclusive" else None})
    return out


def _mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def tuning_rows(rows: Sequence[dict], data_name: str, tuning: dict[str, Sequence]
                ) -> list[dict]:
    """sgsc at the default gamma: the default settings and each tried one (the others at
    their defaults), with validation accuracy -- the basis of the choice -- and size as
    mean and std over seeds; ``best`` marks each setting's highest validation accuracy.
    The values of a setting are compared on the seeds they all ran (the default usually
    ran more), so that a choice is never a seed's luck.  Test accuracy is deliberately
    absent."""
    gamma = default_value(data_name, "gamma")
    defaults = {s: default_value(data_name, s) for s in tuning}
    mine = [r for r in rows if r["method"] == "sgsc" and r["gamma"] == gamma]
    out = []
    for setting, values in tuning.items():
        others = {s: v for s, v in defaults.items() if s != setting}
        by_value = {value: [r for r in mine if r[setting] == value
                            and all(r[s] == v for s, v in others.items())]
                    for value in dict.fromkeys([defaults[setting], *values])}
        by_value = {value: runs for value, runs in by_value.items() if runs}
        common = set.intersection(*({r["seed"] for r in runs} for runs in by_value.values())
                                  ) if by_value else set()
        for value, runs in by_value.items():
            runs = [r for r in runs if r["seed"] in common]
            if not runs:
                continue
            val = compare.t_interval([r["val_acc"] for r in runs])
            size = compare.t_interval([r["storage_bytes"] for r in runs])
            out.append({"setting": setting, "value": value, "default": value == defaults[setting],
                        "seeds": len(runs), "val_acc": val["mean"], "val_acc_std": val["std"],
                        "storage_bytes": size["mean"], "storage_bytes_std": size["std"]})
    for setting in tuning:
        candidates = [r for r in out if r["setting"] == setting]
        best = max(candidates, key=lambda r: r["val_acc"], default=None)
        for r in candidates:
            r["best"] = r is best
    return out


def tuning_verdicts(table: Sequence[dict]) -> list[str]:
    """One sentence per setting of a :func:`tuning_rows` table: which value validation
    prefers, against the default, on how many seeds."""
    lines = []
    for setting in dict.fromkeys(r["setting"] for r in table):
        rows = [r for r in table if r["setting"] == setting]
        best = next(r for r in rows if r["best"])
        default = next((r for r in rows if r["default"]), None)
        tried = ", ".join(f"{r['value']!r}: {r['val_acc']:.4f}" for r in rows)
        if default is None:
            lines.append(f"{setting}: the default did not run; validation accuracy {tried}")
        elif best is default:
            lines.append(f"{setting}: validation keeps the default {default['value']!r} "
                         f"({tried}; {best['seeds']} seed(s))")
        else:
            lines.append(f"{setting}: validation prefers {best['value']!r} over the default "
                         f"{default['value']!r} ({tried}; {best['seeds']} seed(s))")
    return lines


# ----------------------------------------------------------------------------- sweep


def default_value(data_name: str, setting: str) -> Any:
    """The value ``setting`` takes in an sgsc run on ``data_name`` by default."""
    return getattr(train_config("sgsc", data_name), setting)


def axis_grids(data_name: str, methods: Sequence[str], seeds: Sequence[int],
               axes: dict[str, Sequence[Any]], fixed: dict[str, Any], out: str | os.PathLike,
               device: str = "auto") -> dict[str, sweep.Grid]:
    """One grid at the defaults (``"defaults"``) and one per axis with its other values.

    ``lambda_pres`` is swept for sgsc only (sc has no preservation loss).  Values equal to
    the default are dropped from an axis: the ``defaults`` grid already holds that run.
    Raises :class:`sgsc.experiments.sweep.GridError` for an unknown setting or a bad value.
    """
    base = {"data": data_name, "seeds": list(seeds), "fixed": dict(fixed), "out": str(out),
            "device": device}
    grids = {"defaults": sweep.parse_grid(base | {"methods": list(methods)})}
    for axis, values in axes.items():
        if axis in fixed:
            raise sweep.GridError(f"{axis} is both an axis and a fixed setting; keep one")
        others = [v for v in values if v != _default(data_name, axis)]
        chosen = [m for m in methods if axis != LAMBDA or m == "sgsc"]
        if others and chosen:
            grids[axis] = sweep.parse_grid(base | {"methods": chosen, "grid": {axis: others}})
    return grids


def _default(data_name: str, axis: str) -> Any:
    try:
        return default_value(data_name, axis)
    except AttributeError:  # not a training setting: parse_grid names what is valid
        return None


def sweep_rows(reports: dict[str, sweep.SweepReport], data_name: str,
               axes: Sequence[str]) -> list[dict]:
    """One row per finished run: method, seed, the ``axis`` it tests and its ``value``,
    its metrics and :func:`epoch_swing`.  Runs of the ``defaults`` grid appear once per
    axis (as that axis's default value), so every axis reads as a complete curve; their
    ``run_dir`` tells such repeats apart from distinct runs (count runs by it)."""
    rows = []
    for name, report in reports.items():
        for outcome in report.outcomes.values():
            if outcome["status"] != "done" or outcome["spec"]["method"] == "float":
                continue
            result, overrides = outcome["result"], outcome["spec"]["overrides"]
            tested = [name] if name != "defaults" else [
                a for a in axes if a != LAMBDA or result["method"] == "sgsc"]
            for axis in tested:
                value = overrides.get(axis, default_value(data_name, axis))
                rows.append({"axis": axis, "value": value, "method": result["method"],
                             "seed": result["seed"], "setting": f"{axis}={value}",
                             **{k: result.get(k) for k in SWEEP_COLUMNS},
                             "epoch_swing": epoch_swing(result.get("run_dir")),
                             "run_dir": result.get("run_dir")})
    return sorted(rows, key=lambda r: (r["axis"], r["value"], r["method"], r["seed"]))


def _sweep_groups(rows: Sequence[dict], column: str) -> dict[str, dict[str, dict]]:
    """Sweep rows by setting, then method, then seed: the value of ``column``."""
    groups: dict[str, dict[str, dict]] = {}
    for row in rows:
        if row["method"] in ("sc", "sgsc") and row.get(column) is not None:
            groups.setdefault(row["setting"], {}).setdefault(row["method"], {})[
                row["seed"]] = float(row[column])
    return groups


def paired_spread(rows: Sequence[dict], column: str) -> list[dict]:
    """Per setting (``axis=value``, rows of :func:`sweep_rows`) run by sc and sgsc with two
    seeds or more each: the standard deviation over seeds of ``column`` for both, side by
    side, and whether sgsc's is lower."""
    out = []
    for setting, by_method in _sweep_groups(rows, column).items():
        sc, sgsc = by_method.get("sc", {}), by_method.get("sgsc", {})
        if len(sc) > 1 and len(sgsc) > 1:
            sc_std = compare.t_interval(list(sc.values()))["std"]
            sgsc_std = compare.t_interval(list(sgsc.values()))["std"]
            out.append({"setting": setting, "n": min(len(sc), len(sgsc)),
                        f"sc_{column}_std": sc_std, f"sgsc_{column}_std": sgsc_std,
                        "sgsc_lower": sgsc_std < sc_std})
    return out


SWEEP_COLUMNS = ("val_acc", "test_acc", "storage_bytes", "Q", "feedback_events",
                 "selected_epoch", "train_s", "train_flops")  # the last two: the compute table


def epoch_swing(run_dir: str | os.PathLike | None) -> float | None:
    """Mean absolute change of validation accuracy from one epoch to the next (None
    without a history of at least two epochs)."""
    if not run_dir or not (Path(run_dir) / "history.json").exists():
        return None
    rows = json.loads((Path(run_dir) / "history.json").read_text())["history"]
    accs = [r["val_accuracy"] for r in rows if r.get("val_accuracy") is not None]
    if len(accs) < 2:
        return None
    return sum(abs(b - a) for a, b in zip(accs, accs[1:], strict=False)) / (len(accs) - 1)


# ----------------------------------------------------------------------------- search race


def load_search(run_dir: str | os.PathLike) -> dict:
    """The ``search.json`` log of a ``cbtpe`` or ``cbtpe-tpe`` run."""
    path = Path(run_dir) / "search.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a cbtpe run folder?")
    return json.loads(path.read_text())


def search_rows(results: Sequence[dict]) -> list[dict]:
    """One row per cbtpe / cbtpe-tpe / sc run of notebook 04: accuracy, size, search time
    and trials from its ``search.json`` (sc searches nothing: one trial, no search time),
    training time (CB-TPE: search plus final training) and its folder."""
    rows = []
    for r in results:
        log = load_search(r["run_dir"]) if r["method"].startswith("cbtpe") else None
        rows.append({"method": r["method"], "seed": r["seed"], "val_acc": r["val_acc"],
                     "test_acc": r["test_acc"], "storage_bytes": r["storage_bytes"],
                     "search_s": log["search_wall_s"] if log else 0.0,
                     "train_s": r["train_s"],
                     "trials": log["n_trials"] if log else 1,
                     "distinct_trials": log["distinct_trials"] if log else 1,
                     "trials_to_target": log["trials_to_target"] if log else None,
                     "run_dir": r["run_dir"]})
    return rows


def best_so_far(trials: Sequence[dict]) -> list[dict]:
    """Per trial, in order: the best objective so far and the training time spent so
    far (a repeated configuration is answered from the cache and costs nothing)."""
    best, spent, curve = float("-inf"), 0.0, []
    for number, trial in enumerate(trials, start=1):
        best = max(best, trial["value"])
        spent += trial["wall_s"]
        curve.append({"trial": number, "best_value": best, "train_s": spent})
    return curve


def counted_bytes(result: dict) -> int:
    """The storage a search trial would count for a run's model (``ceil(bits / 8)``, as
    :meth:`sgsc.SelfCompression.storage_bytes`), not the packed file's size."""
    return -(-int(result["storage_bits_counted"]) // 8)


# ----------------------------------------------------------------------------- per run


def per_class_rows(results: Sequence[dict], splits: Any) -> list[dict]:
    """Per run: test accuracy of each class (``class_0`` ...) of its selected model, as
    the run stored it (``test_class_acc``); a result of older code without it is measured
    from its model file."""
    rows = []
    for result in results:
        accuracy = result.get("test_class_acc")
        if accuracy is None:
            if not store.has_model(result):
                continue
            model = store.load_model(result, splits)
            accuracy = evaluate(model, splits.test, torch.device("cpu"),
                                per_class=True)["class_accuracy"]
        rows.append({"method": result["method"], "seed": result["seed"],
                     "run_dir": result["run_dir"],
                     **{f"class_{c}": a for c, a in enumerate(accuracy)}})
    return rows


@torch.no_grad()
def sample_names(model: nn.Module, splits: Any, n: int, seed: int,
                 temperature: float = 1.0) -> list[str]:
    """``n`` names sampled from a character model of the ``names`` data (seeded).

    Each sample starts from the boundary token ``.`` (index 0) and ends at the next one,
    as the training rows do.
    """
    generator = torch.Generator().manual_seed(seed)
    start = torch.zeros((n, 1), dtype=torch.long)
    tokens = model.eval().generate(start, splits.block_size - 1, temperature=temperature,
                                   generator=generator)
    names = []
    for row in tokens[:, 1:].tolist():
        end = row.index(0) if 0 in row else len(row)
        names.append(splits.decode(row[:end]))
    return names


def name_samples(results: Sequence[dict], splits: Any, n: int, seed: int) -> list[dict]:
    """Per run of ``seed`` with a model: ``n`` sampled names, and whether each is a name of
    the training split (02's samples table)."""
    train_names = set(splits.documents["train"])
    rows = []
    for result in results:
        if result["seed"] != seed or not store.has_model(result):
            continue
        model = store.load_model(result, splits)
        for i, name in enumerate(sample_names(model, splits, n, seed=seed)):
            rows.append({"method": result["method"], "seed": seed, "sample": i, "name": name,
                         "in_train": name in train_names})
    return rows


# ----------------------------------------------------------------------------- 03's sweeps


def run_axis_sweeps(grids: dict[str, sweep.Grid], workers: int, sweep_root: Path,
                    force: bool = False) -> dict[str, sweep.SweepReport]:
    """Run every grid of :func:`axis_grids` on a local Dask cluster of ``workers``; with
    ``force`` the cached results go first.  A failed run is an error naming the first
    failure and where the tracebacks are."""
    if force and Path(sweep_root).exists():
        shutil.rmtree(sweep_root)
    client = sweep.make_client(workers=workers)
    try:
        outcomes = {name: sweep.run_sweep(grid, client, progress=False)
                    for name, grid in grids.items()}
    finally:
        sweep.close_client(client)
    failed = [o for r in outcomes.values() for o in r.failed]
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed, e.g. {failed[0]['error']}; "
                           f"tracebacks in {sweep.cache_dir(sweep_root)}")
    return outcomes


def sweep_summary(rows: Sequence[dict], columns: Sequence[str] = (
        "test_acc", "storage_bytes", "Q", "epoch_swing")) -> list[dict]:
    """Per swept axis, method and value: n, mean and std of ``columns`` over seeds."""
    summary = []
    for axis in dict.fromkeys(r["axis"] for r in rows):
        for method in ("sc", "sgsc"):
            members = [r for r in rows if r["axis"] == axis and r["method"] == method]
            for line in summarize(members, "value", columns):
                summary.append({"axis": axis, "method": method, **line})
    return summary


def variance_tables(rows: Sequence[dict]) -> dict[str, Any]:
    """sgsc's and sc's spread over seeds, paired by setting: the per-setting spreads of
    test accuracy and epoch swing, their means per method, and how many settings had the
    lower spread under sgsc."""
    spread = paired_spread(rows, "test_acc")
    swing = paired_spread(rows, "epoch_swing")
    stability = summarize([r for r in rows if r["method"] in ("sc", "sgsc")], "method",
                          ["epoch_swing", "test_acc"])
    variance = {"settings_compared": len(spread),
                "sgsc_lower_test_acc_std": sum(r["sgsc_lower"] for r in spread),
                "sgsc_lower_epoch_swing_std": sum(r["sgsc_lower"] for r in swing)}
    return {"spread_test_acc": spread, "spread_epoch_swing": swing, "stability": stability,
            "variance": variance}


# ----------------------------------------------------------------------------- 04's race


def race_tables(logs: dict[tuple[str, int], dict], results: Sequence[dict]
                ) -> tuple[dict[str, list[list[dict]]], list[dict], list[dict]]:
    """04's race: per sampler the best-so-far curve of each seed, those curves as table
    rows, and where each seed's sc run lands on the same objective (one point each)."""
    from sgsc.experiments.baselines import cbtpe  # optuna: imported when a race is drawn

    curves: dict[str, list[list[dict]]] = {"cbtpe": [], "cbtpe-tpe": []}
    race = []
    for (method, seed), log in sorted(logs.items()):
        curve = best_so_far(log["trials"])
        curves[method].append(curve)
        race += [{"method": method, "seed": seed, **point} for point in curve]
    points = []
    for r in (r for r in results if r["method"] == "sc"):
        search = next(x for x in results if x["method"] == "cbtpe" and x["seed"] == r["seed"])
        value = cbtpe.objective(r["val_acc"], counted_bytes(r),
                                search["search"]["budget_bytes"],
                                search["params"]["cbtpe"]["penalty"])
        points.append({"method": "sc", "seed": r["seed"], "trial": 1, "best_value": value,
                       "value": value, "train_s": r["train_s"]})
    return curves, race, points


# ----------------------------------------------------------------------------- 07's files

# Each run's model, encoded the six ways an inference file can be (format 2): packed or
# entropy coded, at each precision -- exact, exponents on a grid, or that and float16
# tensors (narrowed) -- each as the export writes it now, empty rows dropped and rows
# trimmed (the run's own file, which the report keeps, was measured without either:
# harness.RUN_ENCODING).
FILE_VARIANTS = {"packed": {}, "entropy": {"coding": "entropy"},
                 "grid": {"precision": "grid"},
                 "grid+entropy": {"coding": "entropy", "precision": "grid"},
                 "narrow": {"precision": "narrow"},
                 "narrow+entropy": {"coding": "entropy", "precision": "narrow"}}


def variant_coding(variant: str) -> str:
    """The coding of an encoding of :data:`FILE_VARIANTS`: packed or entropy."""
    return FILE_VARIANTS[variant].get("coding", "packed")


def variant_precision(variant: str) -> str:
    """The precision of an encoding of :data:`FILE_VARIANTS`: exact, grid or narrow."""
    return FILE_VARIANTS[variant].get("precision", "exact")


def exact_precision(variant: str) -> bool:
    """Whether an encoding of :data:`FILE_VARIANTS` keeps every float as trained (else
    its file counts only where every seed's accuracy is unchanged)."""
    return variant_precision(variant) == "exact"


# What a variant row's entropy floor is (its text keys the rows' caches).
ENTROPY_FLOOR = ("the packed file of the row's precision with every layer's codes at their "
                 "empirical entropy (an order-0 table per bit depth), all else as stored")


def file_variants(results: Sequence[dict], splits: Any, folder: str | os.PathLike[str]
                  ) -> list[dict]:
    """Per run and encoding (:data:`FILE_VARIANTS`): the file's bytes and the test accuracy
    of the model reloaded from it, beside the entropy floor of its precision
    (:data:`ENTROPY_FLOOR`: a grid or narrowed file's floor is at that precision too).  A
    run's rows are kept in ``folder`` beside its files and reopened while its packed file,
    the format, the encoder's revision, the encodings and the floor's definition are the
    same, so a report rebuilt from cached runs does not encode and evaluate them again."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for result in results:
        packed = Path(result["run_dir"]) / store.PACKED
        cache = folder / f"{Path(result['run_dir']).name}.variants.json"
        key = _variants_key(packed, len(splits.test))
        kept = json.loads(cache.read_text()) if cache.exists() else {}
        if kept.get("key") == key and all(variant_path(folder, result, v).exists()
                                          for v in FILE_VARIANTS):
            rows += kept["rows"]
            continue
        measured = _measure_variants(result, packed, splits, folder)
        atomic.write_json({"key": key, "rows": measured}, cache)
        rows += measured
    return rows


def variant_path(folder: str | os.PathLike[str], result: dict, variant: str) -> Path:
    """Where :func:`file_variants` writes a run's file in encoding ``variant``."""
    return Path(folder) / f"{Path(result['run_dir']).name}.{variant}.sgsc"


def keep_encodings(variants: Sequence[dict], picked: Sequence[dict],
                   folder: str | os.PathLike[str], report_dir: str | os.PathLike[str],
                   data: str) -> list[dict]:
    """Keep in the report (:func:`sgsc.experiments.store.keep_files`) every seed's file of
    each (method, epochs, gamma, encoding) in ``picked`` -- rows of :func:`smallest_at` --
    so that ``verify`` re-measures the sizes and accuracies 07's answer rests on."""
    wanted = {(r["method"], r["epochs"], r["gamma"], r["variant"]) for r in picked}
    files = [(variant_path(folder, row, row["variant"]), {
        "file": store.kept_path(row | {"data": data}, f".{row['variant']}.sgsc"),
        "method": row["method"], "data": data, "seed": row["seed"], "gamma": row["gamma"],
        "epochs": row["epochs"], "encoding": row["variant"],
        "storage_bytes": row["file_bytes"], "test_acc": row["test_acc"]})
        for row in variants
        if (row["method"], row["epochs"], row["gamma"], row["variant"]) in wanted]
    return store.keep_files(files, report_dir)


def _variants_key(packed: Path, test_examples: int) -> dict[str, Any]:
    """What a run's variant rows depend on: the packed file's bytes, the file format and
    the encoder's revision, the encodings asked for and the test set's size."""
    from sgsc.fileformat import export

    return {"packed_sha256": hashlib.sha256(packed.read_bytes()).hexdigest(),
            "format": export.FORMAT_VERSION, "encoder": export.ENCODER_REVISION,
            "variants": FILE_VARIANTS, "entropy_floor": ENTROPY_FLOOR,
            "test_examples": test_examples}


def _measure_variants(result: dict, packed: Path, splits: Any, folder: Path) -> list[dict]:
    from sgsc.fileformat import export

    reopened = export.reopen_compressed(packed)
    rows, floors = [], {}
    for variant, options in FILE_VARIANTS.items():
        path = variant_path(folder, result, variant)
        size = export.save_compressed(reopened, path, **options).file_bytes
        accuracy = evaluate(export.load_compressed(path), splits.test,
                            torch.device("cpu"))["accuracy"]
        if variant_coding(variant) == "packed":  # its codes' floor, at its precision
            budget = export.byte_budget(path)
            floors[variant_precision(variant)] = round(budget["file_bytes"] - sum(
                layer["packed_bytes"] - layer["entropy_floor_bytes"]
                for layer in budget["layers"]), 1)
        rows.append({"variant": variant, "file_bytes": size, "test_acc": accuracy})
    exact = {variant_coding(r["variant"]): r["test_acc"] for r in rows
             if exact_precision(r["variant"])}
    for row in rows:
        # a file at a lower precision against the exact file of its coding, both reloaded
        # here (not the run's own accuracy, which another device may have measured)
        row["same_accuracy"] = row["test_acc"] == exact[variant_coding(row["variant"])]
    base = {"method": result["method"], "seed": result["seed"],
            "gamma": (result.get("params") or {}).get("gamma"),
            "epochs": (result.get("params") or {}).get("epochs"), "run_dir": result["run_dir"]}
    return [base | row | {"entropy_floor_bytes": floors[variant_precision(row["variant"])]}
            for row in rows]


def smallest_at(rows: Sequence[dict], target: float = 0.99, seeds: int | None = None
                ) -> list[dict]:
    """Per (method, epochs, gamma, variant): mean test accuracy (and the seeds' 95 %
    interval of it) and file bytes over seeds; which reach ``target`` on the mean (and on
    how many seeds), and the smallest that does per variant.  A variant at a lower
    precision (grid or narrow) counts only where every seed's accuracy equals its exact
    file's; with ``seeds``, a group counts only with that many distinct seeds
    (``complete``: a run not finished leaves its group out, not averaged over fewer)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["epochs"], row["gamma"], row["variant"]),
                          []).append(row)
    table = []
    for (method, epochs, gamma, variant), members in groups.items():
        acc, acc_std = mean_std([m["test_acc"] for m in members])
        interval = compare.t_interval([m["test_acc"] for m in members])
        size, size_std = mean_std([m["file_bytes"] for m in members])
        floor, _ = mean_std([m["entropy_floor_bytes"] for m in members])
        allowed = exact_precision(variant) or all(m["same_accuracy"] for m in members)
        complete = seeds is None or len({m["seed"] for m in members}) == len(members) == seeds
        table.append({"method": method, "epochs": epochs, "gamma": gamma, "variant": variant,
                      "coding": variant_coding(variant),
                      "precision": variant_precision(variant), "seeds": len(members),
                      "test_acc_mean": acc, "test_acc_std": acc_std,
                      # the seeds' 95 % t interval of the mean: the target is on the mean,
                      # and three seeds say how surely
                      "test_acc_ci_low": interval["ci_low"],
                      "test_acc_ci_high": interval["ci_high"],
                      "file_bytes_mean": size, "file_bytes_std": size_std,
                      "entropy_floor_bytes_mean": floor, "allowed": allowed,
                      "complete": complete,
                      "reaches_target": allowed and complete and at_least(acc, target),
                      "seeds_at_target": sum(at_least(m["test_acc"], target)
                                             for m in members)})
    for variant in FILE_VARIANTS:
        sizes = [r["file_bytes_mean"] for r in table
                 if r["variant"] == variant and r["reaches_target"]]
        for r in table:
            if r["variant"] == variant:
                r["smallest_at_target"] = bool(sizes) and r["reaches_target"] and \
                    r["file_bytes_mean"] == min(sizes)
    return sorted(table, key=lambda r: (r["variant"], r["file_bytes_mean"]))


CODER_TARGET = 0.25  # the file issue's goal: entropy coded >= 25 % below packed (sc's models)


def coder_savings(variants: Sequence[dict], target: float = CODER_TARGET) -> list[dict]:
    """What entropy coding saves, per method, over every model of ``variants`` (rows of
    :func:`file_variants`) at exact precision: how far below its packed file each model's
    entropy-coded file sits, and its entropy floor (:data:`ENTROPY_FLOOR`) -- as shares of
    the packed file: mean, least and most over the models -- and how many reach
    ``target``.  The floor is the codes' order-0 entropy with the bit depths as packed: the
    coder also codes the bit depths and may fit a model per row, so a coded file can lie
    below it -- it says what one free table per layer and bit depth saves on the codes,
    not what any coder can.
    """
    by_model: dict[tuple, dict[str, dict]] = {}
    for row in variants:
        if row["variant"] in ("packed", "entropy"):
            by_model.setdefault((row["method"], row["run_dir"]), {})[row["variant"]] = row
    savings: dict[str, list[tuple[float, float]]] = {}
    for (method, _), pair in sorted(by_model.items()):
        if len(pair) == 2:
            packed = pair["packed"]["file_bytes"]
            savings.setdefault(method, []).append(
                (1 - pair["entropy"]["file_bytes"] / packed,
                 1 - pair["packed"]["entropy_floor_bytes"] / packed))
    table = []
    for method, pairs in savings.items():
        coded, floor = zip(*pairs, strict=True)
        table.append({"method": method, "models": len(pairs),
                      "coded_saving_mean": sum(coded) / len(coded),
                      "coded_saving_min": min(coded), "coded_saving_max": max(coded),
                      "coded_at_target": sum(c >= target for c in coded),
                      "floor_saving_mean": sum(floor) / len(floor),
                      "floor_saving_min": min(floor), "floor_saving_max": max(floor),
                      "floor_at_target": sum(f >= target for f in floor)})
    return table


def budget_rows(smallest: Sequence[dict], models: Sequence[dict],
                long: Sequence[dict[str, Any]]) -> list[dict]:
    """Does a longer budget buy size?  For each method and gamma that a budget of ``long``
    trains, one row per compression budget it was run at (the study's own included, where
    the study ran that gamma): mean validation accuracy over its seeds (``models``: the
    runs), and from ``smallest`` (rows of :func:`smallest_at`) the mean test accuracy, the
    seeds at the target, the mean packed file, and the smallest entropy-coded one that
    counts (:func:`sgsc.reporting.claims.smallest_coded`, the targets table's rule);
    ``complete``: whether every seed has finished (else its means are of fewer seeds)."""
    pairs = {(method, gamma) for budget in long
             for method, gammas in budget["gammas"].items() for gamma in gammas}
    encoded = {key: variants for key, variants in encodings_by_model(smallest).items()
               if (key[0], key[2]) in pairs and key[1] is not None}
    rows = []
    for method, epochs, gamma in sorted(encoded, key=lambda k: (k[0], k[2], k[1])):
        variants = encoded[method, epochs, gamma]
        packed = variants["packed"]
        coded = smallest_coded(variants.values())
        val, _ = mean_std([m["val_acc"] for m in models if m["method"] == method
                           and (m.get("params") or {}).get("gamma") == gamma
                           and (m.get("params") or {}).get("epochs") == epochs])
        rows.append({"method": method, "gamma": gamma, "epochs": epochs,
                     "seeds": packed["seeds"], "complete": packed.get("complete", True),
                     "val_acc_mean": val,
                     "test_acc_mean": packed["test_acc_mean"],
                     "seeds_at_target": packed["seeds_at_target"],
                     "packed_bytes_mean": packed["file_bytes_mean"],
                     "coded_bytes_mean": coded and coded["file_bytes_mean"],
                     "coding": coded and coded["variant"]})
    return rows


# ----------------------------------------------------------------------------- 08's point

def operating_point_requests(point: dict[str, Any]) -> list[dict]:
    """08_operating_point's runs: per seed a float trained for ``point["float_epochs"]``
    and, from it, sc and sgsc at ``point["init_bits"]`` and ``point["gamma"]``; with
    ``point["model"]``, every run builds that variant of the data set's model."""
    from sgsc.experiments.regimes import request

    model = point.get("model")
    return [request(point["data"], method, seed, point["gamma"], init_bits=point["init_bits"],
                    model=model)
            if method != "float" else request(point["data"], "float", seed, model=model)
            for seed in point["seeds"] for method in ("float", "sc", "sgsc")]


def operating_point_budget(point: dict[str, Any]) -> dict[str, int | None]:
    """08_operating_point's budget: the point's own float epochs (and compression epochs,
    where it names them) instead of the profile's; None: the data set's defaults."""
    return {"float_epochs": point.get("float_epochs"), "epochs": point.get("epochs")}


def operating_point_rows(results: Sequence[dict], metric: str = "test_acc") -> list[dict]:
    """Per run: its ``metric`` (``test_acc``, or ``test_loss`` for a language model) on
    validation and test, its size, and size and metric against the float of its seed."""
    val_metric = "val_" + metric.removeprefix("test_")
    floats = {r["seed"]: r for r in results if r["method"] == "float"}
    rows = []
    for r in results:
        reference = floats.get(r["seed"])
        rows.append({"method": r["method"], "seed": r["seed"], val_metric: r[val_metric],
                     metric: r[metric], "storage_bytes": r["storage_bytes"],
                     "float_fraction": r["storage_bytes"] / reference["storage_bytes"]
                     if reference else None,
                     f"{metric}_minus_float": r[metric] - reference[metric]
                     if reference else None,
                     "train_s": r.get("train_s"), "train_flops": r.get("train_flops"),
                     "run_dir": r["run_dir"]})
    return rows

