"""Does training get cheaper as the network shrinks?  One sc run against one float run.

A float MNIST CNN is trained for ``--epochs`` epochs, then self-compression (``sc``, the
package's defaults for the data set: gamma, lr_quant, and dead channels removed every
``shrink_every`` steps) trains the same number of epochs from it, with the same batch
size.  Both run here, one after the other, in this process; each epoch's training time is
printed as the network shrinks, and

    ratio = sc training time / float training time      (the goal: <= 0.7)

Validation and checkpoints are left out of both times (the Trainer's ``wall_s`` counts
them; here only the optimizer steps are timed).

    python benchmarks/shrink.py --data mnist --epochs 6 --threads 2 --json shrink.json
    python benchmarks/shrink.py --data digits --epochs 5 --shrink-every 0   # never shrink

``--json PATH`` also writes the measurement (settings, seconds per epoch, ratio) to PATH.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from sgsc.core.compress import SelfCompression
from sgsc.experiments import runs
from sgsc.experiments.train import Trainer, resolve_device

GOAL_RATIO = 0.7


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--data", default="mnist", choices=("mnist", "digits"),
                        help="data set (mnist needs SGSC_DATA_DIR or a download)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of each run (6)")
    parser.add_argument("--batch-size", type=int, help="batch size (default: the data set's)")
    parser.add_argument("--shrink-every", type=int,
                        help="steps between removals of dead channels (default: the package's;"
                             " 0: only at export)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the measurement to this file")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.threads < 0 or (args.batch_size is not None
                                               and args.batch_size < 1):
        parser.error("--epochs and --batch-size must be positive, --threads >= 0")
    return args


class TimedTrainer(Trainer):
    """A Trainer that records the seconds each epoch's optimizer steps take."""

    def train_epoch(self) -> dict[str, float]:
        device = self.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        metrics = super().train_epoch()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.epoch_seconds.append(time.perf_counter() - start)
        self.epoch_params.append(sum(p.numel() for p in self.model.parameters()))
        return metrics


def timed_fit(model, splits, config, compression=None) -> TimedTrainer:
    trainer = TimedTrainer(model, splits.train, splits.val, config, compression=compression)
    trainer.epoch_seconds, trainer.epoch_params = [], []
    trainer.fit()
    return trainer


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    common = {"epochs": args.epochs, "seed": args.seed, "device": args.device,
              "progress": False}
    if args.batch_size is not None:
        common["batch_size"] = args.batch_size
    sc_extra = {} if args.shrink_every is None else {"shrink_every": args.shrink_every}
    float_config = runs.train_config("float", args.data, **common)
    sc_config = runs.train_config("sc", args.data, **common, **sc_extra)
    if float_config.batch_size != sc_config.batch_size:
        sc_config = runs.train_config("sc", args.data, **common, **sc_extra,
                                      batch_size=float_config.batch_size)
    splits = runs.load_splits(args.data)

    torch.manual_seed(args.seed)
    model = runs.build_data_model(args.data, splits)
    float_times = timed_fit(model, splits, float_config).epoch_seconds
    sc = SelfCompression(model, init_bits=sc_config.init_bits)
    trainer = timed_fit(model, splits, sc_config, compression=sc)
    sc_times = trainer.epoch_seconds

    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"{args.data}: {args.epochs} epochs, batch {sc_config.batch_size}, device "
          f"{device}{threads}, shrink every {sc_config.shrink_every} steps")
    print(f"{'epoch':>5s} {'float s':>9s} {'sc s':>9s} {'sc/float':>9s} {'sc params':>10s} "
          f"{'sc storage B':>13s}")
    for epoch, (f_s, s_s) in enumerate(zip(float_times, sc_times, strict=True), start=1):
        storage = trainer.record.history[epoch - 1]["storage_bytes"]
        print(f"{epoch:5d} {f_s:9.2f} {s_s:9.2f} {s_s / f_s:9.3f} "
              f"{trainer.epoch_params[epoch - 1]:10d} {storage:13d}")
    ratio = sum(sc_times) / sum(float_times)
    verdict = "ok" if ratio <= GOAL_RATIO else f"above the goal {GOAL_RATIO}"
    print(f"float training {sum(float_times):.1f} s, sc training {sum(sc_times):.1f} s")
    print(f"ratio {ratio:.3f}  ({verdict})")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "data": args.data, "epochs": args.epochs, "batch_size": sc_config.batch_size,
            "shrink_every": sc_config.shrink_every, "device": str(device),
            "threads": torch.get_num_threads(), "machine": platform.processor() or
            platform.machine(), "float_epoch_s": float_times, "sc_epoch_s": sc_times,
            "sc_params": trainer.epoch_params, "float_s": sum(float_times),
            "sc_s": sum(sc_times), "ratio": ratio, "goal": GOAL_RATIO}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
