"""What safety guidance costs: one sc and one sgsc run, same data, gamma, seed and budget,
with the seconds of every part of each.

Both runs start from the same float model (trained first, not timed).  Each part is timed
by wrapping the function that does it:

* ``task and size terms`` -- the task loss, L1, dead-bias and size terms (forward);
* ``preservation term`` -- the preservation batch's forward (``preservation_loss``);
* ``backward and update`` -- ``loss.backward()`` and the optimizer step (what is left of
  a training step: measured as the step minus its two forwards);
* ``monitor and feedback`` -- ``SafetyGuidance.step``: monitor reads, priced restores;
* ``shrinking`` -- removing dead channels as training goes;
* ``evaluation`` -- validation (and preservation/monitor) metrics after every epoch;
* ``calibration`` -- the float fine-tune that sets the monitor's level;
* ``preservation set`` -- choosing the critical examples (Grad-CAM, margins, k-means).

Prints each part for both runs and ``ratio`` (sgsc's total over sc's), and with
``--json`` writes the measurement.

    python benchmarks/safety_cost.py --data mnist --epochs 2 --train-rows 20000
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

import torch
from torch.utils.data import TensorDataset

from sgsc.core import preservation as preservation_module
from sgsc.core.compress import SelfCompression
from sgsc.core.loss import CompressionLoss
from sgsc.core.safety import SafetyGuidance
from sgsc.experiments import runs
from sgsc.experiments.train import Trainer

PARTS = ("task and size terms", "preservation term", "backward and update",
         "monitor and feedback", "shrinking", "evaluation", "calibration", "preservation set")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="mnist", help="data set (mnist)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="compression epochs (default: the data set's)")
    parser.add_argument("--float-epochs", type=int, default=None,
                        help="epochs of the float reference (default: the data set's)")
    parser.add_argument("--train-rows", type=int, default=None,
                        help="use the first N training rows (default: all); a stated subset")
    parser.add_argument("--gamma", type=float, default=None, help="size weight (default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write the measurement here")
    return parser.parse_args(argv)


class Clock:
    """Seconds per part, accumulated by wrapped functions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner: object, name: str, part: str) -> mock._patch:
        original = getattr(owner, name)
        clock = self

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                clock.seconds[part] += time.perf_counter() - start

        return mock.patch.object(owner, name, timed)

    @contextmanager
    def timing(self):
        with ExitStack() as stack:
            for owner, name, part in (
                    (CompressionLoss, "terms", "forward"),
                    (SafetyGuidance, "preservation_loss", "preservation term"),
                    (Trainer, "train_epoch", "training"),
                    (SafetyGuidance, "step", "monitor and feedback"),
                    (Trainer, "_maybe_shrink", "shrinking"),
                    (Trainer, "epoch_metrics", "evaluation"),
                    (SafetyGuidance, "calibrate", "calibration"),
                    (preservation_module, "build_preservation_set", "preservation set")):
                stack.enter_context(self.wrap(owner, name, part))
            yield

    def parts(self) -> dict[str, float]:
        """The exclusive seconds of each part of :data:`PARTS` (nested timers taken apart)."""
        s = self.seconds
        forward = s["forward"]  # task and size terms, and the preservation term inside
        return {"task and size terms": forward - s["preservation term"],
                "preservation term": s["preservation term"],
                "backward and update": s["training"] - forward - s["monitor and feedback"]
                - s["shrinking"],
                "monitor and feedback": s["monitor and feedback"], "shrinking": s["shrinking"],
                "evaluation": s["evaluation"], "calibration": s["calibration"],
                "preservation set": s["preservation set"]}


def measure(method: str, args: argparse.Namespace, splits, float_model) -> dict[str, float]:
    """Train ``method`` from ``float_model`` as runs.run does, timing every part."""
    overrides = {k: v for k, v in (("epochs", args.epochs), ("gamma", args.gamma)) if v}
    config = runs.train_config(method, args.data, seed=args.seed, device="cpu",
                               progress=False, **overrides)
    model = copy.deepcopy(float_model)
    compression = SelfCompression(model, init_bits=config.init_bits)
    clock = Clock()
    start = time.perf_counter()
    with clock.timing():
        safety = None
        if method == "sgsc":
            size = runs.DEFAULTS[args.data]["preservation_size"]
            chosen = preservation_module.build_preservation_set(
                float_model, splits.train, size, seed=args.seed)
            safety = SafetyGuidance(float_model, compression, splits.train, preservation=chosen,
                                    feedback=config.feedback, batch_size=config.pres_batch_size,
                                    seed=args.seed, lr=config.lr,
                                    task_batch_size=config.batch_size)
            safety.calibrate()
        trainer = Trainer(model, splits.train, splits.val, config, compression=compression,
                          safety=safety)
        result = trainer.fit()
    parts = clock.parts()
    parts["total"] = time.perf_counter() - start
    parts["storage_bytes"] = result.selected["storage_bytes"]
    parts["val_accuracy"] = result.selected["val_accuracy"]
    return parts


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    splits = runs.load_splits(args.data)
    if args.train_rows:
        splits.train = TensorDataset(*(t[:args.train_rows] for t in splits.train.tensors))
    float_model, _ = runs.train_float(args.data, splits, args.seed,
                                      Path("/tmp/sgsc-bench") / args.data,
                                      "cpu", False, **({"epochs": args.float_epochs}
                                                       if args.float_epochs else {}))
    float_model.eval()
    measured = {method: measure(method, args, splits, float_model) for method in ("sc", "sgsc")}
    print(f"{args.data}, {len(splits.train)} training rows, seed {args.seed}, "
          f"{args.threads} thread(s)")
    print(f"{'part':24s} {'sc s':>9s} {'sgsc s':>9s}")
    for part in (*PARTS, "total"):
        print(f"{part:24s} {measured['sc'][part]:9.1f} {measured['sgsc'][part]:9.1f}")
    ratio = measured["sgsc"]["total"] / measured["sc"]["total"]
    print(f"ratio {ratio:.2f} (sgsc / sc, same data, gamma, seed and epochs)")
    out = {"settings": vars(args) | {"json": None, "train_rows_used": len(splits.train)},
           "seconds": measured, "ratio": ratio}
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
