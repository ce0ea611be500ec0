"""What every method's run shares, whichever method it is: the data set's splits and
model, the float reference of a seed, the run folder and the result it leaves.

``runs.run`` (float, sc, sgsc and its halves) and the baselines (``sgsc.experiments.baselines``) are
both built on this module, so neither imports the other's internals.  A run folder is
keyed by the run's settings, the float reference's folder, the architecture, the code
version and the thread count (:func:`run_folder`); :func:`finish` writes the one flat
result dict every method returns (see :mod:`sgsc.experiments.runs`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import sgsc
from sgsc.core.safety import check_preservation_size
from sgsc.experiments import data as datasets
from sgsc.experiments import provenance
from sgsc.experiments.defaults import DEFAULTS, SAFETY_METHODS, check_method, train_config
from sgsc.experiments.models import build_model
from sgsc.experiments.train import TrainConfig, Trainer
from sgsc.fileformat import atomic

RESULT = "result.json"  # a finished run's result row, in its folder
# How a run's packed file (its storage_bytes and entropy_coded_bytes) is encoded.  Empty
# rows stay in it, and rows keep their learned bit depths: every run of this version
# recorded its sizes so, and a run trained now must measure as one reopened from the cache
# does.  07_file_budget encodes the models with both (the export defaults); the next
# version bump makes that the runs' too.
RUN_ENCODING: dict[str, Any] = {"drop_empty_rows": False, "trim_bit_depths": False}
Splits = datasets.ImageSplits | datasets.TextSplits  # what load_splits gives


def build_data_model(data_name: str, splits: Splits) -> nn.Module:
    """A fresh model of the architecture ``data_name`` uses (vocabulary from ``splits``)."""
    name, config = DEFAULTS[data_name]["model"]
    if name == "char_transformer":
        config = config | {"vocab_size": splits.vocab_size, "block_size": splits.block_size}
    return build_model(name, **config)


def prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    """``{prefix}_{metric}`` names (``accuracy`` shortened to ``acc``), as results use."""
    key = {"accuracy": "acc", "class_accuracy": "class_acc"}
    return {f"{prefix}_{key.get(k, k)}": v for k, v in metrics.items()}


def load_splits(data_name: str) -> Splits:
    """The data set's fixed splits (downloads on first use)."""
    if data_name in datasets.TEXT_DATASETS:
        return datasets.load(data_name, block_size=_block_size(data_name))
    return datasets.load(data_name)


def _block_size(data_name: str) -> int | None:
    return DEFAULTS[data_name]["model"][1].get("block_size")


@functools.cache
def _train_rows(data_name: str, block_size: int | None) -> int:
    """Rows of the training split (loaded once per process, then only counted)."""
    return len(load_splits(data_name).train)


def float_reference(data_name: str, seed: int, root: Path, device: str, progress: bool,
                    **overrides: Any) -> tuple[TrainConfig, Path]:
    """The float model of ``seed``: its TrainConfig and its folder under ``root``."""
    config = train_config("float", data_name, seed=seed, device=device, progress=progress,
                          **overrides)
    return config, run_folder(root, "float", seed, config)


def train_float(data_name: str, splits: Splits, seed: int, root: Path, device: str,
                progress: bool, **overrides: Any) -> tuple[nn.Module, dict]:
    """Train (or resume, or reuse) the float model of ``seed`` in a folder under ``root``
    (``info["run_dir"]``)."""
    config, folder = float_reference(data_name, seed, root, device, progress, **overrides)
    torch.manual_seed(seed)
    model = build_data_model(data_name, splits)
    trainer = Trainer(model, splits.train, splits.val, config, out_dir=folder)
    result = trainer.fit()
    return trainer.model, {"selected_epoch": result.selected_epoch, "wall_s": result.wall_s,
                           "history": result.history, "config": dataclasses.asdict(config),
                           "run_dir": folder, "trained_by": result.trained_by,
                           "train_flops": result.train_flops}


def check_run(method: str, data_name: str, *, seed: int = 0, device: str = "auto",
              progress: bool = False, float_overrides: dict | None = None,
              preservation_size: int | None = None, **overrides: Any
              ) -> tuple[TrainConfig, int]:
    """Every check :func:`run` makes before it trains anything: the method's TrainConfig
    (or the float model's), the float budget and the preservation set's size against the
    training split.  Returns ``(config, preservation size)``; raises ``ValueError``."""
    check_method(method, data_name)
    try:
        float_config = train_config("float", data_name, seed=seed, device=device,
                                    progress=progress, **(float_overrides or {}))
    except ValueError as err:
        if method == "float":
            raise
        raise ValueError(f"the float reference's settings (float_epochs, ...): {err}") from err
    if method == "float":
        if preservation_size is not None:
            raise ValueError("float uses no preservation set; drop preservation_size")
        return float_config, 0
    config = train_config(method, data_name, seed=seed, device=device, progress=progress,
                          **overrides)
    if preservation_size is not None and method not in SAFETY_METHODS:
        raise ValueError(f"{method} uses no preservation set; drop preservation_size")
    size = (DEFAULTS[data_name]["preservation_size"] if preservation_size is None
            else preservation_size)
    if method in SAFETY_METHODS:
        check_preservation_size(size, _train_rows(data_name, _block_size(data_name)),
                                config.feedback, "preservation_size")
    return config, size


def run_folder(root: Path, method: str, seed: int, settings: TrainConfig | dict,
               *extra: Any) -> Path:
    """``<root>/<method>-s<seed>-<key>``: the folder of one run.

    The key hashes the run's settings, ``extra`` (method settings, the float reference's
    folder), the model architecture of the data set, the code version
    (``sgsc.__version__``, raised whenever a change alters results) and torch's thread
    count (on a CPU it changes the numbers).  A rerun therefore
    resumes or reuses a run only when code and settings are the same; anything else gets
    a fresh folder.  Device and progress bars are not part of the key.
    """
    if isinstance(settings, TrainConfig):
        settings = dataclasses.asdict(settings) | {"device": None, "progress": None}
    data_name = root.name
    model = DEFAULTS[data_name]["model"] if data_name in DEFAULTS else None
    text = json.dumps([settings, extra, model, sgsc.__version__, provenance.threads()],
                      sort_keys=True, default=str)
    return root / f"{method}-s{seed}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def trained_on(trained_by: list[dict]) -> str:
    """The CPUs that trained a run, from its ``trained_by`` entries, joined by "; "."""
    cpus = dict.fromkeys(entry.get("cpu") or "not recorded" for entry in trained_by)
    return "; ".join(cpus)


def finished(folder: Path, start: float) -> dict | None:
    """The result a finished run left in ``folder`` -- when it holds every metric the
    notebooks read (a classifier's per-class test accuracy included) -- with this call's
    ``wall_s`` and ``reopened``; None otherwise, and the caller measures again (so a
    result written by older code is evaluated once more, and stored complete)."""
    try:
        row = json.loads((Path(folder) / RESULT).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(row, dict) or ("test_acc" in row and "test_class_acc" not in row):
        return None
    # run_dir: where the run is now, as this caller names it (the stored one is relative to
    # whichever folder trained it: a worker at the repository root, a notebook in notebooks/)
    return row | {"wall_s": round(time.perf_counter() - start, 2), "reopened": True,
                  "run_dir": str(folder)}


def finish(method: str, data_name: str, seed: int, result: dict, start: float,
           folder: Path) -> dict:
    """The result row of a run: identity, ``result``, threads, code, machine, wall time and
    folder, also written to ``<folder>/result.json``.

    ``machine`` is where this call evaluated the model; ``trained_on`` names the CPUs of
    ``result["trained_by"]`` (a flat column for tables: "not recorded" for code that did
    not record its CPU, empty for a method that trains nothing)."""
    if isinstance(result.get("params"), dict):  # the settings that made it, threads too
        result = result | {"params": result["params"] | {"threads": provenance.threads()}}
    row = {"method": method, "data": data_name, "seed": seed, **result,
           "trained_on": trained_on(result.get("trained_by", [])),
           "threads": provenance.threads(), "code": provenance.code_state(),
           "machine": provenance.machine(),
           "wall_s": round(time.perf_counter() - start, 2), "run_dir": str(folder)}
    folder.mkdir(parents=True, exist_ok=True)
    atomic.write_json(row, folder / RESULT)
    return row
