"""What every baseline shares with ``sgsc.experiments.runs``: the float reference, overrides,
the export.

A baseline run is ``runs.run(METHOD, data, ...)``: it trains (or reuses) the float model
of the seed exactly as the self-compression methods do, starts from a copy of it, and
ends by writing the packed file with :func:`sgsc.fileformat.export.save_compressed` and measuring
the model loaded back from that file, so every method's ``storage_bytes`` and test
accuracy mean the same thing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sgsc.core.compress import SelfCompression
from sgsc.core.tasks import evaluate
from sgsc.experiments import harness
from sgsc.experiments.train import TrainConfig
from sgsc.fileformat.export import entropy_coded_bytes, load_compressed, save_compressed


@dataclass
class Reference:
    """The data splits and the trained float model a baseline starts from."""

    data_name: str
    seed: int
    root: Path  # <out_dir>/<data>
    folder: Path  # the float run's folder
    splits: Any
    model: nn.Module
    info: dict
    device: torch.device

    def copy(self) -> nn.Module:
        """A fresh model of the data set's architecture holding the float weights."""
        model = harness.build_data_model(self.data_name, self.splits).to(self.device)
        model.load_state_dict(self.model.state_dict())
        return model

    def float_metrics(self) -> dict[str, float]:
        """Validation metrics of the float model (for drops and targets; never test)."""
        return harness.prefixed("val", evaluate(self.model, self.splits.val, self.device))

    def run_folder(self, method: str, settings: Any, *extra: Any) -> Path:
        """The folder of a baseline run started from this reference."""
        return harness.run_folder(self.root, method, self.seed, settings, *extra,
                               self.folder.name)


def reference(data_name: str, seed: int, out_dir: str | Path, device: str, progress: bool,
              float_overrides: dict | None) -> Reference:
    """Load the splits and train (or resume, or reuse) the float model of ``seed``."""
    root = Path(out_dir) / data_name
    splits = harness.load_splits(data_name)
    model, info = harness.train_float(data_name, splits, seed, root, device, progress,
                                   **(float_overrides or {}))
    model.eval()
    return Reference(data_name, seed, root, info["run_dir"], splits, model, info,
                     next(model.parameters()).device)


def split_overrides(method: str, overrides: dict[str, Any],
                    own: type | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split keyword overrides into the method's own settings and TrainConfig settings.

    ``None`` values (CLI flags not given) are dropped.  A name that belongs to neither is
    an error that lists what is valid.
    """
    own_fields = {f.name for f in dataclasses.fields(own)} if own is not None else set()
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - own_fields - train_fields)
    if unknown:
        raise ValueError(f"{method}: unknown setting(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(sorted(own_fields | train_fields))}")
    mine = {k: v for k, v in given.items() if k in own_fields}
    return mine, {k: v for k, v in given.items() if k not in own_fields}


def refuse(method: str, settings: dict[str, Any], names: tuple[str, ...], why: str) -> None:
    """A clear error for settings that make no sense for ``method`` (e.g. --gamma for PTQ)."""
    bad = [n for n in names if settings.get(n) not in (None, 0, 0.0)]
    if bad:
        raise ValueError(f"{method} does not take {', '.join(bad)}: {why}")


def packed_result(sc: SelfCompression, folder: Path, ref: Reference) -> dict[str, Any]:
    """Export ``sc`` to ``folder/model.sgsc``; sizes and metrics of the model read back.

    The same measurement as ``runs.run`` for sc/sgsc: ``storage_bytes`` is the size of the
    real packed file, and val/test metrics come from the model loaded from it.
    """
    sc.model.eval()
    packed = folder / "model.sgsc"
    save_compressed(sc, packed, **harness.RUN_ENCODING)
    loaded = load_compressed(packed).to(ref.device)
    report = sc.size_report()
    return {
        "storage_bytes": packed.stat().st_size,
        "entropy_coded_bytes": entropy_coded_bytes(sc, **harness.RUN_ENCODING),
        "storage_bits_counted": int(report["storage_bits"]),
        "live_weights": int(report["live_weights"]), "Q": float(report["Q"]),
        "float_val": ref.float_metrics(),
        **harness.prefixed("val", evaluate(loaded, ref.splits.val, ref.device)),
        **harness.prefixed("test", evaluate(loaded, ref.splits.test, ref.device,
                                            per_class=True)),
    }
