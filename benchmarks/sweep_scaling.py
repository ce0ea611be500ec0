"""Sweep scaling: wall time of one small digits grid on 1 and on 2 local Dask workers.

Each worker count gets its own LocalCluster and a fresh output folder (nothing cached);
the cluster is started, and torch imported and the digits loaded on every worker, before
the clock starts: only the sweep is timed.  The grid: a float reference and ``sc`` and
``sgsc`` at two values of gamma for every seed (a profile's mix).  Prints both wall times,
their ratio (1 worker / 2 workers; 2.0 would be perfect scaling) and the efficiency (the
ratio over the ideal one; target 90 %).  Run it on an otherwise idle machine.

The default of 10 epochs makes each run a few seconds long; at 2 epochs a run takes about
one, and the fixed cost of handing a run to a worker and collecting its result weighs on
the ratio as it does not on a profile's runs (minutes each).

    python benchmarks/sweep_scaling.py --seeds 2 --epochs 10
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sgsc.experiments import sweep


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 (2)")
    parser.add_argument("--epochs", type=int, default=10,
                        help="epochs of every run, float references included (10)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts to time (1 2); the ratio is first / last")
    return parser.parse_args(argv)


def grid(out: Path, seeds: int, epochs: int) -> sweep.Grid:
    return sweep.parse_grid({
        "data": "digits", "methods": ["float", "sc", "sgsc"], "seeds": list(range(seeds)),
        "grid": {"gamma": [0.05, 0.1]}, "fixed": {"epochs": epochs, "float_epochs": epochs},
        "out": str(out), "device": "cpu"})


def warm_up() -> None:
    """Import torch and sgsc and load the digits on a worker, so that is not timed."""
    from sgsc.experiments import runs

    runs.load_splits("digits")


def time_sweep(workers: int, args: argparse.Namespace, root: Path) -> float:
    """Seconds the sweep took on ``workers`` fresh local workers (cluster start excluded)."""
    client = sweep.make_client(workers=workers)
    try:
        client.run(warm_up)
        the_grid = grid(root / f"w{workers}", args.seeds, args.epochs)
        report = sweep.run_sweep(the_grid, client, progress=False)
    finally:
        sweep.close_client(client)
    if report.failed:
        raise RuntimeError(f"{len(report.failed)} runs failed: {report.failed[0]['error']}")
    return report.wall_s


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        walls = {w: time_sweep(w, args, Path(folder)) for w in args.workers}
        runs = len(grid(Path(folder), args.seeds, args.epochs).specs())
    for workers, wall in walls.items():
        print(f"{workers} worker(s): {wall:7.2f} s for {runs} runs")
    first, last = args.workers[0], args.workers[-1]
    speedup = walls[first] / walls[last]
    # efficiency: the speed-up over the ideal one (last / first workers)
    efficiency = speedup * first / last
    print(f"ratio {first} / {last} workers: {speedup:.2f}x, efficiency {efficiency:.0%} "
          f"(target >= 90 %; total {time.perf_counter() - start:.1f} s with cluster "
          "start-up)")


if __name__ == "__main__":
    main()
