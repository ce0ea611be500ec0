"""The two studies behind notebooks 03 and 04: a one-at-a-time sweep and a search race.

**Sweep** (``03_sweeps``).  The SGSC paper varies the initial bit depth, gamma, lambda,
batch size and learning rate.  A full product of those axes is thousands of runs, so
:func:`axis_grids` varies *one setting at a time* around the data set's defaults: one grid
at the defaults, plus one grid per axis holding that axis's other values.  Each grid is an
ordinary :class:`sgsc.sweep.Grid` (cached by key, run on Dask), so a rerun is free and a
``full`` profile can hand the same study to a cluster.  :func:`sweep_rows` flattens the
outcomes into one row per run, labelled with the axis and value it tests, and
:func:`epoch_swing` measures how much a run's validation accuracy jumps between epochs --
the instability the preservation set is meant to damp.

**Search race** (``04_cbtpe_search``).  :func:`best_so_far` turns a CB-TPE search log
(``search.json`` of a ``cbtpe`` / ``cbtpe-tpe`` run) into best-objective-so-far curves
against trials and against training time; :func:`sgsc.baselines.cbtpe.objective` scores
any other compressed model -- a self-compression run -- the same way, so it lands on the
same axes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sgsc import sweep
from sgsc.runs import train_config

LAMBDA = "lambda_pres"  # only sgsc has a preservation loss to weigh


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
    Raises :class:`sgsc.sweep.GridError` for an unknown setting or a bad value.
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
    axis (as that axis's default value), so every axis reads as a complete curve."""
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
                             "epoch_swing": epoch_swing(result.get("run_dir"))})
    return sorted(rows, key=lambda r: (r["axis"], r["value"], r["method"], r["seed"]))


SWEEP_COLUMNS = ("val_acc", "test_acc", "storage_bytes", "Q", "feedback_events",
                 "selected_epoch")


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
