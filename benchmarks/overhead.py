"""Training-step overhead of self-compression, and export/load time, on the MNIST CNN.

One training step (forward, backward, Adam step) of the float model is timed against the
same step of the model wrapped in :class:`sgsc.core.compress.SelfCompression` (loss
``cross_entropy + gamma * size_loss``).  The two are interleaved (alternating which goes
first) so that drifting machine load hits both alike; the medians are compared.  Random
MNIST-shaped data: only speed is measured.

    python benchmarks/overhead.py --device auto --batch-size 128 --steps 50
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import timing
import torch
import torch.nn.functional as F
from torch import nn

from sgsc.core.compress import SelfCompression
from sgsc.experiments.models import build_model
from sgsc.fileformat.export import entropy_coded_bytes, load_compressed, save_compressed

GOAL_RATIO = 1.3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: cuda when available, else cpu (default: auto)",
    )
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (128)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant (30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (5)")
    parser.add_argument("--gamma", type=float, default=0.01, help="size-loss weight (0.01)")
    parser.add_argument(
        "--export-repeats", type=int, default=5, help="timed save/load repetitions (5)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads on cpu (0: leave torch's default)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but CUDA is not available")
    return torch.device(name)


def make_steps(device: torch.device, batch_size: int, gamma: float, seed: int):
    """(float step, self-compression step, the SelfCompression) on identical models/data."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 1, 28, 28, generator=generator).to(device)
    y = torch.randint(10, (batch_size,), generator=generator).to(device)

    torch.manual_seed(seed)
    plain = build_model("mnist_cnn").to(device).train()
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    torch.manual_seed(seed)
    sc = SelfCompression(build_model("mnist_cnn").to(device).train())
    sc_opt = torch.optim.Adam(sc.param_groups())

    def train_step(model: nn.Module, opt: torch.optim.Optimizer, extra: Callable | None):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        if extra is not None:
            loss = loss + gamma * extra()
        loss.backward()
        opt.step()

    def float_step() -> None:
        train_step(plain, plain_opt, None)

    def sc_step() -> None:
        train_step(sc.model, sc_opt, sc.size_loss)

    return float_step, sc_step, sc


def time_export(sc: SelfCompression, repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mnist_cnn.sgsc"
        saves, loads = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            info = save_compressed(sc, path)
            saves.append(time.perf_counter() - start)
            start = time.perf_counter()
            load_compressed(path)
            loads.append(time.perf_counter() - start)
    return {
        "save_s": statistics.median(saves),
        "load_s": statistics.median(loads),
        "file_bytes": info.file_bytes,
        "storage_bytes": info.storage_bytes,
        "entropy_coded_bytes": entropy_coded_bytes(sc),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    float_step, sc_step, sc = make_steps(device, args.batch_size, args.gamma, args.seed)
    # a GPU step returns before its kernels finish: time it to their end
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    times = timing.interleaved({"float": float_step, "sc": sc_step}, args.steps, args.warmup,
                               sync)
    float_times, sc_times = times["float"], times["sc"]
    float_ms = 1e3 * statistics.median(float_times)
    sc_ms = 1e3 * statistics.median(sc_times)
    ratio = sc_ms / float_ms
    export = time_export(sc, args.export_repeats)

    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"MNIST CNN, batch {args.batch_size}, {args.steps} steps, device {device}{threads}")
    print(f"{'measurement':34s} {'value':>12s}")
    print(f"{'float training step (median)':34s} {float_ms:10.2f} ms")
    print(f"{'self-compression step (median)':34s} {sc_ms:10.2f} ms")
    verdict = "ok" if ratio <= GOAL_RATIO else f"above goal {GOAL_RATIO}x"
    print(f"{'overhead ratio':34s} {ratio:11.3f}x  ({verdict})")
    print(f"{'save_compressed (median)':34s} {1e3 * export['save_s']:10.2f} ms")
    print(f"{'load_compressed (median)':34s} {1e3 * export['load_s']:10.2f} ms")
    print(f"{'storage_bits / 8':34s} {export['storage_bytes']:10.0f} B")
    print(f"{'file size':34s} {export['file_bytes']:10d} B")
    print(f"{'file size, entropy coded':34s} {export['entropy_coded_bytes']:10d} B")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
