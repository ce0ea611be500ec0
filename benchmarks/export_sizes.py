"""Bits per weight of one trained model in each coding: raw packing, lzma, the entropy coder.

Reads the model a self-compression run selected (its ``checkpoint.pt`` in a run folder,
e.g. ``runs/paper/mnist/sc-s0-*``), writes it once per coding and prints the file size
and the bits per stored weight (file bits over the weights the file stores), all measured
in this run, and whether the file reloads to exactly the pruned model:

    python benchmarks/export_sizes.py runs/paper/mnist/sc-s0-*
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import torch

from sgsc.core.compress import SelfCompression
from sgsc.experiments import defaults
from sgsc.experiments.models import build_model
from sgsc.experiments.train import CHECKPOINT
from sgsc.fileformat.export import CODINGS, load_compressed, save_compressed
from sgsc.structure.prune import load_state_resizing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("run_dir", type=Path, help="folder of a finished sc or sgsc run")
    return parser.parse_args(argv)


def trained(run_dir: Path) -> SelfCompression:
    """The run's selected model, wrapped as it was trained."""
    result = json.loads((run_dir / "result.json").read_text())
    name, config = defaults.DEFAULTS[result["data"]]["model"]
    if name != "mnist_cnn":
        raise SystemExit(f"error: {run_dir} is a {name} run; this benchmark reads MNIST CNNs")
    state = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)
    model = build_model(name, **config)
    sc = SelfCompression(model, init_bits=result["params"]["init_bits"])
    load_state_resizing(model, state["selected_state"] or state["model"])
    model.eval()
    return sc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.run_dir / CHECKPOINT).exists():
        raise SystemExit(f"error: no {CHECKPOINT} in {args.run_dir}: pass a finished run")
    sc = trained(args.run_dir)
    x = torch.randn(4, 1, 28, 28)
    # A file holds the pruned model: zero-bit channels kept in the live one (revivable by
    # the feedback) are folded into the next bias there, which moves outputs by float
    # rounding; the file must reproduce the pruned model exactly.
    pruned = copy.deepcopy(sc)
    pruned.prune()
    with torch.no_grad():
        reference = pruned.model(x)
        folding = (sc.model(x) - reference).abs().max().item()
    print(f"{args.run_dir}: {sc.storage_bytes()} bytes counted, {sc.live_weights()} weights "
          f"with bits; pruning moves the outputs by at most {folding:.2g}")
    print(f"{'coding':10s} {'file bytes':>11s} {'bits/weight':>12s}  round trip")
    with tempfile.TemporaryDirectory() as folder:
        for coding in CODINGS:
            path = Path(folder) / f"{coding}.sgsc"
            info = save_compressed(sc, path, coding=coding)
            with torch.no_grad():
                exact = torch.equal(load_compressed(path)(x), reference)
            per_weight = 8 * info.file_bytes / max(sc.live_weights(), 1)
            print(f"{coding:10s} {info.file_bytes:11d} {per_weight:12.3f}  "
                  f"{'exact' if exact else 'DIFFERS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
