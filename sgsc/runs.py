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
import functools
import hashlib
import json
import time
from pathlib import Path

import torch
from torch import nn

import sgsc
from sgsc import atomic, provenance
from sgsc import data as datasets
from sgsc.baselines import METHODS as BASELINE_METHODS  # names only: no import cycle
from sgsc.compress import SelfCompression
from sgsc.export import entropy_coded_bytes, load_compressed, save_compressed
from sgsc.feedback import FeedbackConfig
from sgsc.models import CNNConfig, build_model
from sgsc.preservation import build_preservation_set
from sgsc.safety import SafetyGuidance
from sgsc.tasks import evaluate
from sgsc.train import TrainConfig, Trainer, count_weights, float_storage_bytes

# Safety-guided self-compression and its two halves, for the ablation: sc plus the
# preservation loss alone (no monitor, no feedback), and sc plus the feedback alone.
SAFETY_METHODS = ("sgsc", "sc-pres", "sc-feedback")
# Baselines (uniform-ptq-B, uniform-qat-B, diffq, cbtpe, cbtpe-tpe): see sgsc.baselines.
METHODS = ("float", "sc", *SAFETY_METHODS, *BASELINE_METHODS)

# Defaults per data set: model, float budget, compression budget and coefficients;
# "sgsc" overrides SGSC_EXTRA for that data set.
DEFAULTS: dict[str, dict] = {
    "digits": {
        "model": ("mnist_cnn", dataclasses.asdict(CNNConfig.for_digits())),
        "float": {"epochs": 20, "batch_size": 32, "lr": 3e-3},
        "compress": {"epochs": 20, "batch_size": 32, "lr": 1e-3, "lr_quant": 0.05,
                     "gamma": 0.1},
        "preservation_size": 100,
    },
    "mnist": {
        "model": ("mnist_cnn", dataclasses.asdict(CNNConfig())),
        "float": {"epochs": 3, "batch_size": 128, "lr": 3e-3},
        # SCNN's lr on b and e: fast descent, kept stable by the preservation loss,
        # the feedback controller and the cosine schedule
        "compress": {"epochs": 6, "batch_size": 128, "lr": 1e-3, "lr_quant": 0.5,
                     "gamma": 0.05},
        "preservation_size": 1000,
    },
    "names": {
        "model": ("char_transformer", {"block_size": 32}),
        "float": {"epochs": 10, "batch_size": 64, "lr": 3e-3},
        # at lr_quant 0.05 / gamma 0.02 ten epochs left 28 % of the float size; SCNN's
        # lr_quant and a stronger size term reach under 10 % at the float model's loss
        "compress": {"epochs": 10, "batch_size": 64, "lr": 1e-3, "lr_quant": 0.5,
                     "gamma": 0.1},
        "preservation_size": 500,
        # an LM never fits its preservation set: at lambda 1 those 500 names pulled
        # validation loss up 0.16 nats; 0.1 keeps it near plain self-compression's
        "sgsc": {"lambda_pres": 0.1},
    },
    "tinyshakespeare": {
        "model": ("char_transformer", {"block_size": 32}),
        "float": {"epochs": 1, "batch_size": 64, "lr": 3e-3},
        "compress": {"epochs": 1, "batch_size": 64, "lr": 1e-3, "lr_quant": 0.05,
                     "gamma": 0.02},
        "preservation_size": 500,
    },
}
# Self-compression removes its dead channels as it trains (see Trainer._maybe_shrink).
SC_EXTRA = {"shrink_every": 50}
# L1: chosen on validation (notebook 01's "choices on validation"); see README.
SGSC_EXTRA = {"lambda_pres": 1.0, "l1_weights": 0.3,
              "feedback": dataclasses.asdict(FeedbackConfig())}


def _check(method: str, data_name: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if data_name not in DEFAULTS:
        raise ValueError(f"unknown data set {data_name!r}; choose one of "
                         f"{', '.join(DEFAULTS)}")


def train_config(method: str, data_name: str, **overrides) -> TrainConfig:
    """The default TrainConfig of ``method`` on ``data_name``, with overrides applied."""
    _check(method, data_name)
    stage = "float" if method == "float" else "compress"
    values = dict(DEFAULTS[data_name][stage])
    if method in ("sc", *SAFETY_METHODS):
        values |= SC_EXTRA
    if method in SAFETY_METHODS:  # the safety terms, and a data set's own choices for them
        values |= SGSC_EXTRA | DEFAULTS[data_name].get("sgsc", {})
        # The halves add one mechanism each to sc; the L1 term belongs to the full method.
        if method == "sc-pres":
            values |= {"feedback": None, "l1_weights": 0.0}
        elif method == "sc-feedback":
            values |= {"lambda_pres": 0.0, "l1_weights": 0.0}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(sorted(fields))}")
    return TrainConfig(**(values | {k: v for k, v in overrides.items() if v is not None}))


def build_data_model(data_name: str, splits) -> nn.Module:
    """A fresh model of the architecture ``data_name`` uses (vocabulary from ``splits``)."""
    name, config = DEFAULTS[data_name]["model"]
    if name == "char_transformer":
        config = config | {"vocab_size": splits.vocab_size, "block_size": splits.block_size}
    return build_model(name, **config)


def _metrics(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    key = {"accuracy": "acc"}
    return {f"{prefix}_{key.get(k, k)}": v for k, v in metrics.items()}


def load_splits(data_name: str):
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


def train_float(data_name: str, splits, seed: int, root: Path, device: str,
                progress: bool, **overrides) -> tuple[nn.Module, dict]:
    """Train (or resume, or reuse) the float model of ``seed`` in a folder under ``root``
    (``info["run_dir"]``)."""
    config = train_config("float", data_name, seed=seed, device=device, progress=progress,
                          **overrides)
    folder = run_folder(root, "float", seed, config)
    torch.manual_seed(seed)
    model = build_data_model(data_name, splits)
    trainer = Trainer(model, splits.train, splits.val, config, out_dir=folder)
    result = trainer.fit()
    return trainer.model, {"selected_epoch": result.selected_epoch, "wall_s": result.wall_s,
                           "history": result.history, "config": dataclasses.asdict(config),
                           "run_dir": folder, "trained_by": result.trained_by}


def run(method: str, data_name: str, *, seed: int = 0, out_dir: str | Path = "runs",
        device: str = "auto", progress: bool = True, float_overrides: dict | None = None,
        preservation_size: int | None = None, **overrides) -> dict:
    """Run ``method`` on ``data_name``; see the module docstring for the result."""
    _check(method, data_name)
    # --- baselines: uniform PTQ/QAT, DiffQ, CB-TPE (sgsc.baselines) -------------------
    if method in BASELINE_METHODS:
        if preservation_size is not None:
            raise ValueError(f"{method} uses no preservation set; drop preservation_size")
        from sgsc import baselines

        return baselines.run(method, data_name, seed=seed, out_dir=out_dir, device=device,
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
    atomic.ensure_writable(root)  # an unwritable output fails now, not after training
    splits = load_splits(data_name)
    float_model, float_info = train_float(data_name, splits, seed, root, device, progress,
                                          **(float_overrides or {}))
    dev = next(float_model.parameters()).device
    if method == "float":
        result = {"storage_bytes": float_storage_bytes(float_model),
                  "live_weights": count_weights(float_model),
                  "selected_epoch": float_info["selected_epoch"], "params": float_info["config"],
                  "train_s": round(float_info["wall_s"], 2),
                  "trained_by": float_info["trained_by"],
                  **_metrics("val", evaluate(float_model, splits.val, dev)),
                  **_metrics("test", evaluate(float_model, splits.test, dev))}
        return _finish(method, data_name, seed, result, start, float_info["run_dir"])

    chosen, pres_info = None, {}
    if method in SAFETY_METHODS:
        chosen = build_preservation_set(float_model, splits.train, size, seed=seed,
                                        device=str(dev), progress=progress)
        pres_info = {"preservation_size": len(chosen.indices),
                     "preservation_counts": chosen.counts()}
    model = build_data_model(data_name, splits).to(dev)
    model.load_state_dict(float_model.state_dict())
    compression = SelfCompression(model, init_bits=config.init_bits)
    safety = None
    if chosen is not None:
        safety = SafetyGuidance(float_model, compression, splits.train, preservation=chosen,
                                feedback=config.feedback, batch_size=config.pres_batch_size,
                                augment=config.pres_augment, bn=config.pres_bn, seed=seed,
                                lr=config.lr, task_batch_size=config.batch_size)
        pres_info["monitor_size"] = len(safety.monitor_indices)
    out = run_folder(root, method, seed, config, pres_info, float_info["run_dir"].name)
    if chosen is not None:  # which examples guided the run, for figures and audits
        atomic.write_json(chosen.to_dict() | {"monitor_indices": safety.monitor_indices.tolist()},
                          out / "preservation.json")
    trainer = Trainer(model, splits.train, splits.val, config, compression=compression,
                      safety=safety, out_dir=out)
    trained = trainer.fit()

    model.eval()
    packed = out / "model.sgsc"
    save_compressed(compression, packed)
    loaded = load_compressed(packed).to(dev)
    report = compression.size_report()
    result = {
        "storage_bytes": packed.stat().st_size,
        "entropy_coded_bytes": entropy_coded_bytes(compression),
        "storage_bits_counted": int(report["storage_bits"]),
        "live_weights": int(report["live_weights"]), "Q": float(report["Q"]),
        "selected_epoch": trained.selected_epoch, "train_s": round(trained.wall_s, 2),
        "trained_by": trained.trained_by,
        "feedback_events": len(trained.feedback_events),
        **feedback_effect(trained.feedback_events),
        "params": dataclasses.asdict(config),
        "float_val": _metrics("val", evaluate(float_model, splits.val, dev)),
        **pres_info,
        # measured on the model loaded back from the packed file: what a user would ship
        **_metrics("val", evaluate(loaded, splits.val, dev)),
        **_metrics("test", evaluate(loaded, splits.test, dev)),
    }
    return _finish(method, data_name, seed, result, start, out)


def check_run(method: str, data_name: str, *, seed: int = 0, device: str = "auto",
              progress: bool = False, float_overrides: dict | None = None,
              preservation_size: int | None = None, **overrides) -> tuple[TrainConfig, int]:
    """Every check :func:`run` makes before it trains anything: the method's TrainConfig
    (or the float model's), the float budget and the preservation set's size against the
    training split.  Returns ``(config, preservation size)``; raises ``ValueError``."""
    _check(method, data_name)
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
        _check_preservation_size(size, _train_rows(data_name, _block_size(data_name)),
                                 config.feedback)
    return config, size


def _check_preservation_size(size: object, train_rows: int,
                             feedback: FeedbackConfig | None) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= train_rows:
        raise ValueError(f"preservation_size must be an integer between 1 and the {train_rows} "
                         f"rows of the training split, got {size!r}")
    if feedback is not None and min(size * feedback.monitor_fraction,
                                    size * (1 - feedback.monitor_fraction)) < 1:
        raise ValueError(f"preservation_size={size} with monitor_fraction="
                         f"{feedback.monitor_fraction} leaves no monitor or no loss part; "
                         "use a larger preservation set")


def feedback_effect(events: list[dict]) -> dict:
    """What the feedback did, summed over a run's events: bits it gave back and the mean
    change of the monitor loss per event (negative: each restore lowered it)."""
    if not events:
        return {"feedback_bits": 0, "feedback_monitor_change": None}
    changes = [e["monitor_loss_after"] - e["monitor_loss_before"] for e in events]
    return {"feedback_bits": sum(e["bits_added"] for e in events),
            "feedback_monitor_change": sum(changes) / len(changes)}


def run_folder(root: Path, method: str, seed: int, settings: TrainConfig | dict,
               *extra) -> Path:
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


def _finish(method: str, data_name: str, seed: int, result: dict, start: float,
            folder: Path) -> dict:
    row = {"method": method, "data": data_name, "seed": seed, **result,
           "threads": provenance.threads(), "code": provenance.code_state(),
           "wall_s": round(time.perf_counter() - start, 2), "run_dir": str(folder)}
    folder.mkdir(parents=True, exist_ok=True)
    atomic.write_json(row, folder / "result.json")
    return row
