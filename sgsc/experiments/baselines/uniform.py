"""Uniform fixed-bit quantization: post-training (PTQ) and quantization-aware training (QAT).

Every conv/linear weight is quantized symmetrically per output channel at the same width
``B`` (:class:`~sgsc.experiments.baselines.fixed.FixedBits`); biases, norms and embeddings stay in
float32, exactly as self-compression stores them.

* ``uniform-ptq-B``: quantize the trained float model of the seed; no training.
* ``uniform-qat-B``: start from the float model and train with the compression budget of
  the data set (same epochs, batch size, lr and schedule as ``sc``), the quantizer in the
  forward pass with straight-through gradients, ``gamma = 0`` and the widths frozen; the
  scales follow ``max|w|`` at every step.  Selection is on validation, as for ``sc``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from sgsc.experiments import harness
from sgsc.experiments.baselines import UNIFORM_BITS
from sgsc.experiments.baselines.common import packed_result, reference, refuse, split_overrides
from sgsc.experiments.baselines.fixed import FixedBits
from sgsc.experiments.defaults import train_config
from sgsc.experiments.train import Trainer

SCHEME = "symmetric per-channel, scale max|w|/(2^(B-1)-1)"


def parse(method: str) -> tuple[str, int]:
    """``"uniform-qat-4"`` -> ``("qat", 4)``; a clear error for anything else."""
    parts = method.split("-")
    if len(parts) != 3 or parts[0] != "uniform" or parts[1] not in ("ptq", "qat"):
        raise ValueError(f"{method!r} is not uniform-ptq-B or uniform-qat-B")
    if not parts[2].isdigit() or int(parts[2]) not in UNIFORM_BITS:
        raise ValueError(f"{method}: B must be one of {', '.join(map(str, UNIFORM_BITS))}")
    return parts[1], int(parts[2])


def run(method: str, data_name: str, *, seed: int = 0, out_dir: str | Path = "runs",
        device: str = "auto", progress: bool = True, float_overrides: dict | None = None,
        **overrides: Any) -> dict:
    """Run ``uniform-ptq-B`` or ``uniform-qat-B``; returns the ``runs`` result schema."""
    kind, bits = parse(method)
    _, train = split_overrides(method, overrides)
    if kind == "ptq":
        if train:
            raise ValueError(f"{method} does no training, so it takes no training settings "
                             f"(got {', '.join(sorted(train))}); use uniform-qat-{bits}")
        return _ptq(method, data_name, bits, seed, out_dir, device, progress, float_overrides)
    refuse(method, train, ("gamma", "lambda_pres", "lr_quant"),
           "the bit widths are fixed, so there is no size term and nothing to learn in them")
    return _qat(method, data_name, bits, seed, out_dir, device, progress, float_overrides, train)


def _ptq(method, data_name, bits, seed, out_dir, device, progress, float_overrides) -> dict:
    start = time.perf_counter()
    ref = reference(data_name, seed, out_dir, device, progress, float_overrides)
    out = ref.run_folder(method, {"bits": bits})
    if (reopened := harness.finished(out, start)) is not None:
        return reopened
    fixed = FixedBits(ref.copy(), bits)
    result = {"bits": bits, "params": {"bits": bits, "scheme": SCHEME, "training": "none"},
              "selected_epoch": 0, "train_s": 0.0, "train_flops": 0.0,
              "trained_by": [],  # trains nothing
              **packed_result(fixed.sc, out, ref)}
    return harness.finish(method, data_name, seed, result, start, out)


def _qat(method, data_name, bits, seed, out_dir, device, progress, float_overrides,
         train: dict) -> dict:
    start = time.perf_counter()
    ref = reference(data_name, seed, out_dir, device, progress, float_overrides)
    config = train_config(method, data_name, seed=seed, device=device, progress=progress,
                               **(train | {"gamma": 0.0, "lr_quant": 0.0}))
    out = ref.run_folder(method, config, {"bits": bits})
    if (reopened := harness.finished(out, start)) is not None:
        return reopened
    fixed = FixedBits(ref.copy(), bits)
    trainer = Trainer(fixed.model, ref.splits.train, ref.splits.val, config,
                      compression=fixed.sc, out_dir=out)
    with fixed.tracking():
        trained = trainer.fit()
    result = {"bits": bits,
              "params": {"bits": bits, "scheme": SCHEME, **dataclasses.asdict(config)},
              "selected_epoch": trained.selected_epoch, "train_s": round(trained.wall_s, 2),
              "train_flops": trained.train_flops,
              "trained_by": trained.trained_by, **packed_result(fixed.sc, out, ref)}
    return harness.finish(method, data_name, seed, result, start, out)
