"""How far a training step runs above its FLOP floor, and why, on the MNIST CNN.

The study's cost table (notebook 05) puts sc's runs further above their FLOP floor than
the float runs: their networks shrink.  This times one training step (forward, backward, AdamW) of

    float-full     the study's float CNN, widths (32, 32, 64, 64)
    float-shrunk   a float CNN of the widths a kept sc model file has (what sc trains
                   for most of its epochs once its dead channels are removed)
    sc-shrunk      those widths wrapped in SelfCompression: quantizer and size term

at ``--batch-size`` and at four times it, on random MNIST-shaped data (only speed is
measured).  Steps of every variant are interleaved, so that drifting machine load hits
all alike; medians are compared.  Each step's floor is its FLOPs (6 x forward MACs x
images, :func:`sgsc.structure.prune.count_flops`) over this process's matmul peak
(:func:`sgsc.experiments.provenance.peak_flops`).  Printed per variant: ms per step,
GFLOP/s, ``x floor``, and ``us per image``; then, measured in this run,

    shrunk_vs_full   x floor of float-shrunk / x floor of float-full
    quantizer_share  1 - t(float-shrunk) / t(sc-shrunk), at --batch-size
    batch_gain       us per image of sc-shrunk at --batch-size / at 4x it

``batch_gain`` tells what kind of cost sits above the floor: near 1, it grows with the
images, as the convolutions' own kernels do when the layers are thin (their matrix
products have a few rows, far from the matmul peak: torch's profiler puts three quarters
of a thin step in them); well above 1, it is fixed per step (per-operator dispatch), which
a larger batch -- another training run, other numbers -- would spread.

    python benchmarks/floor.py --model reports/paper/models/mnist/sc-s0-35627d0144.sgsc
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import timing
import torch
import torch.nn.functional as F

from sgsc.core.compress import SelfCompression
from sgsc.experiments import store
from sgsc.experiments.models import CNNConfig, MnistCNN
from sgsc.experiments.provenance import peak_flops
from sgsc.fileformat.export import load_compressed
from sgsc.structure.prune import count_flops

REPORT = Path(__file__).resolve().parents[1] / "reports" / "paper"
BATCH_FACTOR = 4  # the larger batch each variant is also timed at


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="a compressed MNIST CNN file whose widths the shrunk variants "
                             "take (default: the paper report's smallest sc file at "
                             "98.5 %% test accuracy or more)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (128)")
    parser.add_argument("--steps", type=int, default=30,
                        help="timed steps per variant and batch size (30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (5)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: as the study's workers train)")
    args = parser.parse_args(argv)
    for name in ("batch_size", "steps", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if args.model is not None and not args.model.is_file():
        parser.error(f"--model {args.model}: no such file")
    return args


def default_model(report: Path = REPORT, min_accuracy: float = 0.985) -> Path:
    """The report's smallest kept sc file on MNIST at ``min_accuracy`` or more."""
    rows = [r for r in store.read_manifest(report).values()
            if r["data"] == "mnist" and r["method"] == "sc"
            and r.get("test_acc", 0) >= min_accuracy]
    if not rows:
        raise SystemExit(f"error: {report} keeps no sc model file of mnist; pass --model")
    return report / store.MODELS / min(rows, key=lambda r: r["storage_bytes"])["file"]


def shrunk_widths(path: Path) -> tuple[int, int, int, int]:
    """The four conv widths of the MNIST CNN stored in ``path``."""
    model = load_compressed(path)
    if not isinstance(model, MnistCNN):
        raise SystemExit(f"error: {path} holds a {type(model).__name__}, not the MNIST CNN")
    return tuple(getattr(model, f"conv{i}").out_channels for i in range(1, 5))


def make_step(widths: tuple[int, ...], compressed: bool, batch: int) -> tuple[Callable, float]:
    """A training step of a fresh CNN of ``widths`` (wrapped in SelfCompression when
    ``compressed``) on one random batch, and that step's FLOPs."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=generator)
    y = torch.randint(10, (batch,), generator=generator)
    torch.manual_seed(0)
    model = MnistCNN(CNNConfig(widths=widths)).train()
    flops = 6.0 * count_flops(model, x[:1]) * batch
    if compressed:
        sc = SelfCompression(model)
        model(x[:1])  # the first forward traces the channel graph: not a step to time
        optimizer = torch.optim.AdamW(sc.param_groups())
        size = sc.size_loss
    else:
        optimizer, size = torch.optim.AdamW(model.parameters(), lr=1e-3), None

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        if size is not None:
            loss = loss + 0.05 * size()
        loss.backward()
        optimizer.step()

    return step, flops


def measure(widths: tuple[int, ...], batch: int, rounds: int, warmup: int,
            peak: float) -> list[dict]:
    """One row per variant and batch size: ms per step, GFLOP/s, x floor, us per image."""
    full = MnistCNN().config.widths
    variants = {"float-full": (full, False), "float-shrunk": (widths, False),
                "sc-shrunk": (widths, True)}
    steps, flops = {}, {}
    for name, (shape, compressed) in variants.items():
        for images in (batch, BATCH_FACTOR * batch):
            key = f"{name}@{images}"
            steps[key], flops[key] = make_step(shape, compressed, images)
    seconds = {key: statistics.median(t)
               for key, t in timing.interleaved(steps, rounds, warmup).items()}
    rows = []
    for key, t in seconds.items():
        name, images = key.split("@")
        rows.append({"variant": name, "batch": int(images), "ms_per_step": 1e3 * t,
                     "gflops": flops[key] / t / 1e9, "x_floor": t / (flops[key] / peak),
                     "us_per_image": 1e6 * t / int(images)})
    return rows


def summary(rows: list[dict], batch: int) -> dict[str, float]:
    """The three ratios of the module docstring, from ``rows``."""
    at = {(r["variant"], r["batch"]): r for r in rows}
    return {
        "shrunk_vs_full": at["float-shrunk", batch]["x_floor"] / at["float-full", batch]["x_floor"],
        "quantizer_share": 1 - at["float-shrunk", batch]["ms_per_step"]
        / at["sc-shrunk", batch]["ms_per_step"],
        "batch_gain": at["sc-shrunk", batch]["us_per_image"]
        / at["sc-shrunk", BATCH_FACTOR * batch]["us_per_image"],
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    path = args.model or default_model()
    widths = shrunk_widths(path)
    peak = peak_flops()
    print(f"model file {path.name}: widths {widths}; matmul peak {peak / 1e9:.1f} GFLOP/s, "
          f"{args.threads} thread(s)")
    rows = measure(widths, args.batch_size, args.steps, args.warmup, peak)
    print(f"{'variant':<14}{'batch':>6}{'ms/step':>10}{'GFLOP/s':>10}{'x floor':>9}"
          f"{'us/image':>10}")
    for r in rows:
        print(f"{r['variant']:<14}{r['batch']:>6}{r['ms_per_step']:>10.2f}{r['gflops']:>10.1f}"
              f"{r['x_floor']:>9.2f}{r['us_per_image']:>10.1f}")
    ratios = summary(rows, args.batch_size)
    for name, value in ratios.items():
        print(f"{name} = {value:.2f}")
    return {"widths": widths, "peak_gflops": peak / 1e9, "rows": rows, **ratios}


if __name__ == "__main__":
    main()
