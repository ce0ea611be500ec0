"""The run store: runs on disk, for the notebooks -- run a grid, find each run's folder,
reload what it made.

:func:`sgsc.experiments.runs.run` checkpoints every run in a folder under
``out_dir/<data>/`` and resumes from it, so running a finished grid again only reopens
it.  This module adds what the notebooks need on top: ``force`` (delete and retrain), the
folder of each result (for its ``history.json``, ``preservation.json`` and
``model.sgsc``), the models themselves and the stored bit depths of a packed file.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sgsc.core.preservation import PreservationSet
from sgsc.core.tasks import evaluate
from sgsc.experiments import harness, models, runs
from sgsc.experiments.profiles import PROFILES
from sgsc.experiments.train import CHECKPOINT, HISTORY
from sgsc.fileformat import atomic, export

PACKED = "model.sgsc"


def run_grid(methods: Sequence[str], data_name: str, seeds: Sequence[int], *,
             out_dir: str | os.PathLike[str], device: str = "auto", force: bool = False,
             float_epochs: int | None = None, epochs: int | None = None,
             progress: bool = False, **overrides: Any) -> list[dict]:
    """Run every method for every seed (float references are shared per seed).

    Each result dict of :func:`sgsc.experiments.runs.run` gains ``run_dir``: its folder (or None
    when a method keeps no folder).  With ``force`` the grid's folders are deleted first.
    """
    if force:
        clear_runs(out_dir, data_name, methods, seeds)
    results = []
    for seed in seeds:
        for method in methods:
            result = runs.run(method, data_name, seed=seed, out_dir=out_dir, device=device,
                              progress=progress, float_overrides={"epochs": float_epochs},
                              **training_overrides(method, epochs=epochs, **overrides))
            folder = find_run_dir(out_dir, result)
            result["run_dir"] = None if folder is None else str(folder)
            results.append(result)
    return results


def run_requests(requests: Sequence[dict], data_name: str, *,
                 out_dir: str | os.PathLike[str], device: str = "auto",
                 float_epochs: int | None = None, epochs: int | None = None) -> list[dict]:
    """:func:`run_grid` for each request ``{"methods", "seeds", "overrides"}`` (the parts
    of :func:`sgsc.experiments.studies.image_study` and
    :func:`sgsc.experiments.studies.text_study`), in order."""
    return [result for request in requests
            for result in run_grid(request["methods"], data_name, request["seeds"],
                                   out_dir=out_dir, device=device, float_epochs=float_epochs,
                                   epochs=epochs, **request["overrides"])]


def trains(method: str) -> bool:
    """Whether ``method`` trains beyond the float reference (and so takes ``epochs``)."""
    return method != "float" and not method.startswith("uniform-ptq-")


def training_overrides(method: str, **overrides: Any) -> dict[str, Any]:
    """The overrides ``method`` accepts: none for the float model (its budget is
    ``float_overrides``) or for post-training quantization, all of them otherwise."""
    return {k: v for k, v in overrides.items() if v is not None} if trains(method) else {}


def _folders(root: Path, method: str, seed: int) -> list[Path]:
    """Folders that may hold a run of ``method`` and ``seed`` (see runs.run_folder)."""
    return sorted(p for p in root.glob(f"{method}-s{seed}-*") if p.is_dir())


def clear_runs(out_dir: str | os.PathLike[str], data_name: str, methods: Sequence[str],
               seeds: Sequence[int]) -> list[Path]:
    """Delete the folders (checkpoints included) of these methods and seeds, and of their
    float references; return what was deleted."""
    root = Path(out_dir) / data_name
    gone = []
    for seed in seeds:
        folders = _folders(root, "float", seed)
        for method in methods:
            folders += _folders(root, method, seed)
        for folder in folders:
            if folder.is_dir():
                shutil.rmtree(folder)
                gone.append(folder)
    return gone


def find_run_dir(out_dir: str | os.PathLike[str], result: dict) -> Path | None:
    """The folder a result of :func:`sgsc.experiments.runs.run` was written to.

    A run lives in ``<data>/<method>-s<seed>-<key>`` (see :func:`sgsc.experiments.runs.run_folder`);
    without a ``run_dir`` in ``result``, it is the newest such folder whose
    ``result.json`` has the same settings.
    """
    if result.get("run_dir"):
        return Path(result["run_dir"])
    root = Path(out_dir) / result["data"]
    candidates = sorted((f / "result.json" for f in _folders(root, result["method"],
                                                              result["seed"])
                         if (f / "result.json").exists()),
                        key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        if json.loads(path.read_text()).get("params") == result.get("params"):
            return path.parent
    return None


def load_history(run_dir: str | os.PathLike[str]) -> dict:
    """A run's ``history.json``: config, per-epoch rows, selected epoch, and (with feedback)
    ``feedback`` events and ``feedback_checks``."""
    return json.loads((Path(run_dir) / HISTORY).read_text())


def flat(results: Sequence[dict]) -> list[dict]:
    """Results without their nested fields (params, counts), ready for a table."""
    return [{k: v for k, v in r.items() if not isinstance(v, (dict, list))} for r in results]


# ----------------------------------------------------------------------------- models


def has_model(result: dict) -> bool:
    """Whether the run left a model to reload (a packed file, or a float checkpoint)."""
    if not result.get("run_dir"):
        return False
    name = CHECKPOINT if result["method"] == "float" else PACKED
    return (Path(result["run_dir"]) / name).exists()


def load_model(result: dict, splits: Any) -> nn.Module:
    """The model a run selected, in eval mode on the CPU.

    Compressed runs: loaded back from the packed ``model.sgsc`` (what a user would ship).
    Float runs: the selected state of the float checkpoint.
    """
    folder = Path(result["run_dir"])
    if result["method"] != "float":
        return export.load_compressed(folder / PACKED)
    state = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=True)
    model = harness.build_data_model(result["data"], splits)
    model.load_state_dict(state["selected_state"] or state["model"])
    return model.eval()


def stored_bit_depths(path: str | os.PathLike[str], model: nn.Module | None = None
                      ) -> dict[str, dict[str, Any]]:
    """Per quantized layer of a packed file: the bit depth of every stored channel, and
    how many channels the layer had before pruning (``channels``); pruned channels are
    not stored and count as 0 bits.  ``model``: the network before pruning, needed only
    for a model outside sgsc's registry (the file names its class, not its shape)."""
    budget = export.byte_budget(path)
    meta = export.read_metadata(path)
    if model is None:
        if str(meta["model"]).startswith(export.CUSTOM):
            raise ValueError(f"{path} holds a model outside sgsc's registry ({meta['model']}); "
                             "pass model=, an instance of it before pruning, to count the "
                             "channels each layer had")
        model = models.build_model(meta["model"], **meta["config"])
    original = model.state_dict()
    return {layer["layer"]: {"bits": np.asarray(layer["bits"], dtype=int),
                             "channels": int(original[f"{layer['layer']}.weight"].shape[0])}
            for layer in budget["layers"]}


# ----------------------------------------------------------------------------- model files
# A report keeps the model file of every run it reports (a few KB each), so that its
# numbers can be checked without training again: `python -m sgsc verify reports/paper`.

MODELS = "models"  # <report>/models/<data>/<run folder>.sgsc and models/manifest.json
MANIFEST = "manifest.json"


def keep_models(results: Sequence[dict], report_dir: str | os.PathLike[str]) -> list[dict]:
    """Copy each result's ``model.sgsc`` into ``<report_dir>/models/`` and add it to the
    manifest with what the report says of it (size and test metrics); returns the rows
    added or updated.  Results without a file (float, PTQ without a run folder) are
    skipped."""
    files = []
    for result in results:
        source = Path(result["run_dir"]) / PACKED if result.get("run_dir") else None
        if source is None or not source.exists():
            continue
        files.append((source, {
            "file": kept_path(result),
            "method": result["method"], "data": result["data"], "seed": result["seed"],
            "gamma": (result.get("params") or {}).get("gamma"),
            "storage_bytes": result["storage_bytes"],
            **{k: result[k] for k in ("test_acc", "test_loss") if k in result}}))
    return keep_files(files, report_dir)


def kept_path(result: dict, suffix: str = ".sgsc") -> str:
    """Where below a report's ``models/`` the file of ``result``'s run is kept: the run's
    folder below its profile's run folder (``runs/<profile>/``) -- ``mnist/sc-s0-...``, or
    ``search/digits/sc-s0-...`` for a study that trains in a folder of its own -- so that
    runs of the same settings that two studies trained apart (on two machines: two
    results) never replace each other's file.  A run outside any profile's folder is kept
    as ``<data>/<its folder's name>``."""
    folder = Path(result["run_dir"])
    profile_at = [i for i, part in enumerate(folder.parts[:-1]) if part in PROFILES]
    below = folder.parts[profile_at[-1] + 1:] if profile_at else (result["data"], folder.name)
    return "/".join(below) + suffix


def keep_files(files: Sequence[tuple[Path, dict]], report_dir: str | os.PathLike[str]
               ) -> list[dict]:
    """Copy each ``(source, row)`` to ``<report_dir>/models/<row["file"]>`` and record
    ``row`` -- at least ``file``, ``data``, ``storage_bytes`` and a test metric, which
    :func:`verify_models` checks -- in the manifest; returns the rows."""
    folder = Path(report_dir) / MODELS
    manifest = read_manifest(report_dir)
    for source, row in files:
        target = folder / row["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(target, Path(source).read_bytes())
        manifest[row["file"]] = row
    atomic.write_json(sorted(manifest.values(), key=lambda r: r["file"]), folder / MANIFEST)
    return [row for _, row in files]


def read_manifest(report_dir: str | os.PathLike[str]) -> dict[str, dict]:
    """The kept model files of a report, by file (empty when it keeps none)."""
    path = Path(report_dir) / MODELS / MANIFEST
    if not path.exists():
        return {}
    return {row["file"]: row for row in json.loads(path.read_text())}


def verify_models(report_dir: str | os.PathLike[str], sample: int | None = None,
                  seed: int = 0, tolerance: int = 0, data: str | None = None
                  ) -> Iterator[dict]:
    """Reload every kept model file of a report (or only those of data set ``data``, or
    a seeded ``sample`` of them), re-measure its size and its test metric, and compare
    both with the manifest.

    A file's size must match exactly; its test accuracy may differ by ``tolerance`` test
    examples (another CPU rounds a few borderline logits the other way), its test loss by
    the same share.  Yields one row per file, as each is checked, with the measured values
    and ``ok``; a report without model files is an error at the call.
    """
    manifest = sorted(read_manifest(report_dir).values(), key=lambda r: r["file"])
    if not manifest:
        raise FileNotFoundError(f"{Path(report_dir) / MODELS / MANIFEST} lists no model "
                                "files: the report keeps none yet")
    if data is not None:
        kept = sorted({r["data"] for r in manifest})
        manifest = [r for r in manifest if r["data"] == data]
        if not manifest:
            raise ValueError(f"the report keeps no model files of {data!r}; it keeps files "
                             f"of {', '.join(kept)}")
    if sample is not None and sample < len(manifest):
        picked = np.random.default_rng(seed).choice(len(manifest), sample, replace=False)
        manifest = [manifest[i] for i in sorted(picked)]
    return _verified(Path(report_dir), manifest, tolerance)


def _verified(report_dir: Path, manifest: list[dict], tolerance: int) -> Iterator[dict]:
    splits: dict[str, Any] = {}
    for entry in manifest:
        path = report_dir / MODELS / entry["file"]
        model = export.load_compressed(path)
        if entry["data"] not in splits:
            splits[entry["data"]] = harness.load_splits(entry["data"])
        test = splits[entry["data"]].test
        measured = evaluate(model, test, torch.device("cpu"))
        size = path.stat().st_size
        slack = tolerance / len(test)
        row = {"file": entry["file"], "storage_bytes": size,
               "expected_bytes": entry["storage_bytes"]}
        ok = size == entry["storage_bytes"]
        if "test_acc" in entry:
            row |= {"test_acc": measured["accuracy"], "expected_acc": entry["test_acc"]}
            ok &= abs(measured["accuracy"] - entry["test_acc"]) <= slack + 1e-12
        elif "test_loss" in entry:
            row |= {"test_loss": measured["loss"], "expected_loss": entry["test_loss"]}
            ok &= abs(measured["loss"] - entry["test_loss"]) <= 1e-4 + slack
        yield row | {"ok": bool(ok)}


def bit_depth_table(layers: dict[str, dict[str, Any]]) -> list[dict]:
    """Per layer: channels before/after pruning, mean and max bits of stored channels."""
    rows = []
    for name, layer in layers.items():
        bits = layer["bits"]
        rows.append({"layer": name, "channels": layer["channels"], "stored": len(bits),
                     "removed": layer["channels"] - len(bits),
                     "mean_bits": float(bits.mean()) if len(bits) else 0.0,
                     "max_bits": int(bits.max()) if len(bits) else 0})
    return rows


def preservation_set(result: dict) -> PreservationSet:
    """The preservation set a safety run trained with, read from its folder (the run wrote
    it to ``preservation.json``; nothing is chosen again)."""
    folder = Path(result["run_dir"])
    try:
        return PreservationSet.from_dict(json.loads((folder / "preservation.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FileNotFoundError(f"{folder / 'preservation.json'} is missing or unreadable "
                                f"({type(err).__name__}); run {result['method']} seed "
                                f"{result['seed']} again to write it") from err
