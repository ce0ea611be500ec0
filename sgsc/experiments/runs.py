"""Methods as named runs: defaults per data set, the result schema, and the run folder.

``run("sgsc", "mnist", seed=0)`` trains what the method needs (a float reference first,
for the compressed methods), selects on validation, exports the compressed model to a
real packed file, and returns one flat result dict:

    method, data, seed, val_acc/test_acc (classifiers) or val_loss/test_loss (text),
    storage_bytes (size of the packed file), entropy_coded_bytes, live_weights, Q,
    selected_epoch, feedback_events (and feedback_bits, feedback_monitor_change: the
    bits restored and the mean monitor-loss change per event), preservation_size,
    monitor_size, train_s, wall_s, params, threads, trained_by (the code states that
    trained its epochs) and code (version, git_sha, sgsc_dirty of the code that exported and
    evaluated it)

``train_s`` is the method's own training time, summed over resumes (the float
reference's for ``float``; never the shared float reference's for the others), so it
survives a rerun that only reloads a finished run; ``wall_s`` is the time of this call.

Test metrics are computed once, on the selected model, for reporting only.  A run
folder holds checkpoints, so a killed run resumes; the float reference of a seed is
shared by the compressed methods of that seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from sgsc.core.compress import SelfCompression
from sgsc.core.preservation import PreservationSet, build_preservation_set
from sgsc.core.safety import SafetyGuidance
from sgsc.core.tasks import evaluate
from sgsc.experiments import provenance
from sgsc.experiments.baselines import METHODS as BASELINE_METHODS  # names only: no import cycle
from sgsc.experiments.defaults import (  # noqa: F401  (the defaults, where users look for them)
    DEFAULTS,
    METHODS,
    SAFETY_METHODS,
    SC_EXTRA,
    SGSC_EXTRA,
    check_method,
    train_config,
)
from sgsc.experiments.harness import (  # noqa: F401  (the shared harness, as runs.* for users)
    RUN_ENCODING,
    build_data_model,
    check_run,
    finish,
    finished,
    float_reference,
    load_splits,
    prefixed,
    run_folder,
    train_float,
)
from sgsc.experiments.train import TrainConfig, Trainer, count_weights, float_storage_bytes
from sgsc.fileformat import atomic
from sgsc.fileformat.export import entropy_coded_bytes, load_compressed, save_compressed

# The feedback's log reads the validation loss before and after every attempted restore
# (never to decide one): on a fixed sample of this many validation images, so that a run
# with many attempts does not spend more on its log than on its training.
FEEDBACK_LOG_ROWS = 1000


def run(method: str, data_name: str, *, seed: int = 0, out_dir: str | Path = "runs",
        device: str = "auto", progress: bool = True, float_overrides: dict | None = None,
        preservation_size: int | None = None, reopen_only: bool = False,
        **overrides: Any) -> dict | None:
    """Run ``method`` on ``data_name``; see the module docstring for the result.

    ``reopen_only``: train nothing -- return the finished run's result, or None where the
    run (or its float reference) has not finished."""
    check_method(method, data_name)
    # --- baselines: uniform PTQ/QAT, DiffQ, CB-TPE (sgsc.experiments.baselines) -------------------
    if method in BASELINE_METHODS:
        if reopen_only:
            raise ValueError(f"reopen_only is for float, sc and the safety methods, not {method}")
        if preservation_size is not None:
            raise ValueError(f"{method} uses no preservation set; drop preservation_size")
        return _run_baseline(method, data_name, seed=seed, out_dir=out_dir, device=device,
                             progress=progress, float_overrides=float_overrides, **overrides)
    # --- end baselines ----------------------------------------------------------------
    start = time.perf_counter()
    provenance.code_state()  # read before training: the code as it is loaded now
    root = Path(out_dir) / data_name
    if method == "float":  # the method's own settings are the float model's
        float_overrides = (float_overrides or {}) | overrides
    config, size = check_run(method, data_name, seed=seed, device=device, progress=progress,
                             float_overrides=float_overrides,
                             preservation_size=preservation_size, **overrides)
    if reopen_only and not _float_finished(data_name, seed, root, device, float_overrides):
        return None
    atomic.ensure_writable(root)  # an unwritable output fails now, not after training
    splits = load_splits(data_name)
    float_model, float_info = train_float(data_name, splits, seed, root, device, progress,
                                          **(float_overrides or {}))
    dev = next(float_model.parameters()).device
    if method == "float":
        if (reopened := finished(float_info["run_dir"], start)) is not None:
            return reopened
        result = {"storage_bytes": float_storage_bytes(float_model),
                  "live_weights": count_weights(float_model),
                  "selected_epoch": float_info["selected_epoch"], "params": float_info["config"],
                  "train_s": round(float_info["wall_s"], 2),
                  "train_flops": float_info["train_flops"],
                  "trained_by": float_info["trained_by"],
                  **prefixed("val", evaluate(float_model, splits.val, dev)),
                  **prefixed("test", evaluate(float_model, splits.test, dev, per_class=True))}
        return finish(method, data_name, seed, result, start, float_info["run_dir"])

    chosen, pres_info = None, {}
    if method in SAFETY_METHODS:
        chosen = preservation_set(float_model, splits.train, size, seed, float_info["run_dir"],
                                  device=dev, progress=progress)
        # the monitor SafetyGuidance will hold out (the same seeded split), for the folder key
        monitor = (chosen.split(config.feedback.monitor_fraction, seed=seed)[1].indices.tolist()
                   if config.feedback is not None else [])
        pres_info = {"preservation_size": len(chosen.indices),
                     "preservation_counts": chosen.counts(), "monitor_size": len(monitor)}
    out = run_folder(root, method, seed, config, pres_info, float_info["run_dir"].name)
    if (reopened := finished(out, start)) is not None or reopen_only:
        return reopened  # nothing to train or measure (or, reopening only, nothing there)
    model = build_data_model(data_name, splits).to(dev)
    model.load_state_dict(float_model.state_dict())
    compression = SelfCompression(model, init_bits=config.init_bits)
    safety = None
    if chosen is not None:
        level = calibrated_level(float_info["run_dir"], config, monitor, seed)
        safety = SafetyGuidance(float_model, compression, splits.train, preservation=chosen,
                                feedback=config.feedback, batch_size=config.pres_batch_size,
                                augment=config.pres_augment, bn=config.pres_bn, seed=seed,
                                lr=config.lr, task_batch_size=config.batch_size,
                                float_level=level.get("float_level") if config.feedback
                                else None, validation_set=_log_sample(splits.val))
        if config.feedback is not None and safety.float_level is None:
            safety.calibrate()  # a float fine-tune: kept in the float run's folder
            atomic.write_json({"monitor_indices": monitor, "float_level": safety.float_level},
                              level["path"])
        # which examples guided the run, for figures and audits
        atomic.write_json(chosen.to_dict() | {"monitor_indices": safety.monitor_indices.tolist(),
                                              "float_level": safety.float_level},
                          out / "preservation.json")
    trainer = Trainer(model, splits.train, splits.val, config, compression=compression,
                      safety=safety, out_dir=out)
    trained = trainer.fit()

    model.eval()
    packed = out / "model.sgsc"
    save_compressed(compression, packed, **RUN_ENCODING)
    loaded = load_compressed(packed).to(dev)
    report = compression.size_report()
    result = {
        "storage_bytes": packed.stat().st_size,
        "entropy_coded_bytes": entropy_coded_bytes(compression, **RUN_ENCODING),
        "storage_bits_counted": int(report["storage_bits"]),
        "live_weights": int(report["live_weights"]), "Q": float(report["Q"]),
        "selected_epoch": trained.selected_epoch, "train_s": round(trained.wall_s, 2),
        "train_flops": trained.train_flops, "trained_by": trained.trained_by,
        "feedback_events": len(trained.feedback_events),
        **feedback_effect(trained.feedback_events, trained.feedback_attempts),
        "params": dataclasses.asdict(config),
        "float_val": prefixed("val", evaluate(float_model, splits.val, dev)),
        **pres_info,
        # measured on the model loaded back from the packed file: what a user would ship
        **prefixed("val", evaluate(loaded, splits.val, dev)),
        **prefixed("test", evaluate(loaded, splits.test, dev, per_class=True)),
    }
    return finish(method, data_name, seed, result, start, out)


def _float_finished(data_name: str, seed: int, root: Path, device: str,
                    float_overrides: dict | None) -> bool:
    _, folder = float_reference(data_name, seed, root, device, False, **(float_overrides or {}))
    return finished(folder, time.perf_counter()) is not None


def preservation_set(float_model: nn.Module, train: Dataset, size: int, seed: int,
                     float_dir: Path, *, device: str | torch.device,
                     progress: bool = True) -> PreservationSet:
    """The preservation set of ``size`` rows the float model of ``float_dir`` picks, built
    once per float run and read back from ``float_dir`` after that (Grad-CAM and k-means
    over the training split take about a minute on MNIST)."""
    path = Path(float_dir) / f"preservation-n{size}-s{seed}.json"
    try:
        chosen = PreservationSet.from_dict(_read_json(path))
        chosen.subset(train)  # it was chosen from this split
        if len(chosen) == size:
            return chosen
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing or unreadable: choose it again
    chosen = build_preservation_set(float_model, train, size, seed=seed, device=str(device),
                                    progress=progress)
    atomic.write_json(chosen.to_dict(), path)
    return chosen


def calibrated_level(float_dir: Path, config: TrainConfig, monitor: list[int], seed: int
                     ) -> dict:
    """The monitor's calibrated float level, when an earlier run of this float model
    measured it with the same monitor and calibration (``float_level``), and the file it
    is kept in (``path``): the fine-tune depends on the float model, the monitor rows, the
    seed, the learning rate, the batch size and the steps -- not on gamma or the other
    settings of the run -- so every safety run of a seed shares it."""
    if config.feedback is None:
        return {"path": None}
    key = json.dumps([monitor, seed, config.lr, config.batch_size,
                      config.feedback.calibration_steps], sort_keys=True)
    path = Path(float_dir) / f"calibration-{hashlib.sha256(key.encode()).hexdigest()[:10]}.json"
    saved = _read_json(path)
    if saved.get("monitor_indices") != monitor:
        saved = {}  # another monitor (or nothing yet): calibrate
    return {"path": path, "float_level": saved.get("float_level")}


def _read_json(path: Path) -> dict:
    """The JSON object in ``path``; {} when it is missing or unreadable."""
    try:
        state = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _run_baseline(method: str, data_name: str, **kw) -> dict:
    """Run baseline ``method`` (its module is imported only when it runs)."""
    if method.startswith("uniform-"):
        from sgsc.experiments.baselines import uniform

        return uniform.run(method, data_name, **kw)
    if method == "diffq":
        from sgsc.experiments.baselines import diffq

        return diffq.run(data_name, **kw)
    from sgsc.experiments.baselines import cbtpe

    return cbtpe.run(method, data_name, **kw)


def _log_sample(val: torch.utils.data.Dataset) -> torch.utils.data.Dataset:
    """:data:`FEEDBACK_LOG_ROWS` validation images, the same seeded sample in every run."""
    if len(val) <= FEEDBACK_LOG_ROWS:
        return val
    rows = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))
    return torch.utils.data.Subset(val, rows[:FEEDBACK_LOG_ROWS].tolist())


def feedback_effect(events: list[dict], attempts: list[dict] | None = None) -> dict:
    """What the feedback did: the bits its kept restores gave back, the mean change of
    the monitor loss per kept restore (negative by construction: a restore is kept only
    when it lowered it), and -- over *every* attempt, kept or rolled back -- the mean
    change of the monitor loss and of the validation loss (the feedback's effect)."""
    attempts = attempts or []
    val = [a["val_loss_after"] - a["val_loss_before"] for a in attempts
           if a.get("val_loss_before") is not None]
    monitor = [a["monitor_loss_after"] - a["monitor_loss_before"] for a in attempts]
    effect = {"feedback_attempts": len(attempts),
              "feedback_attempt_monitor_change": sum(monitor) / len(monitor) if monitor
              else None,
              "feedback_attempt_val_change": sum(val) / len(val) if val else None}
    if not events:
        return effect | {"feedback_bits": 0, "feedback_monitor_change": None}
    changes = [e["monitor_loss_after"] - e["monitor_loss_before"] for e in events]
    return effect | {"feedback_bits": sum(e["bits_added"] for e in events),
                     "feedback_monitor_change": sum(changes) / len(changes)}
