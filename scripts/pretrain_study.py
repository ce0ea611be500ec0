"""Train the runs of notebooks 01 and 02 on local Dask workers, before the notebooks.

A notebook trains whatever is missing one run after another; this trains the same runs
(same settings, same run folders) on ``--workers`` single-threaded processes first, so
that the notebooks then only reload them.  Parts: ``main`` (01's methods), ``ablation``,
``frontier`` and ``tuning`` (01's safety study), ``text`` (02's methods; profiles that
change the text model's shape are left to the notebook).

    python scripts/pretrain_study.py --profile paper --workers 2
    python scripts/pretrain_study.py --profile paper --parts text
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sgsc import profiles, studies, sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--profile", default="paper", choices=tuple(profiles.PROFILES))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="runs", help="run cache root (notebooks: ../runs)")
    parser.add_argument("--device", default="auto", choices=profiles.DEVICES)
    parser.add_argument("--parts", nargs="*", default=["main", "ablation", "frontier", "tuning"],
                        choices=("main", "ablation", "frontier", "tuning", "text"))
    args = parser.parse_args(argv)
    prof = profiles.PROFILES[args.profile]
    parts = studies.image_study(prof)
    parts["main"] = [{"methods": list(prof.methods), "seeds": list(prof.seeds), "overrides": {}}]
    out = Path(args.out) / args.profile
    grids = studies.study_grids({name: parts[name] for name in args.parts if name != "text"},
                                prof.image_data, out, profiles.budget(prof), args.device)
    if "text" in args.parts:
        if prof.text_model:
            parser.error(f"profile {args.profile} changes the text model: let 02 train it")
        text = {"text": [{"methods": list(prof.text_methods), "seeds": list(prof.text_seeds),
                          "overrides": {}}]}
        grids += studies.study_grids(text, prof.text_data, out, profiles.budget(prof, "text"),
                                     args.device)
    client = sweep.make_client(args.workers)
    start = time.perf_counter()
    try:
        for grid in grids:
            report = sweep.run_sweep(grid, client, progress=False)
            print(f"{grid.methods} {grid.grid}: {len(report.outcomes)} runs, "
                  f"{len(report.failed)} failed, {time.perf_counter() - start:.0f} s", flush=True)
            for line in sweep.summary(report, grid):
                print("  " + line, flush=True)
    finally:
        sweep.close_client(client)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
