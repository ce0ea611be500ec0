"""Command-line interface: `python -m sgsc --help`."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from sgsc.experiments import data, provenance


def _print_error(err: BaseException) -> None:
    """One ``error:`` line on stderr, however many lines the message has (a notebook's
    parameter check lists its problems one per line)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    print("error: " + " ".join(lines), file=sys.stderr)


def _cmd_data(args: argparse.Namespace) -> int:
    datasets = tuple(args.datasets) or data.DATASETS
    unknown = [name for name in datasets if name not in data.DATASETS]
    if unknown:
        print(f"error: unknown data set {', '.join(unknown)}; choose from "
              f"{', '.join(data.DATASETS)}", file=sys.stderr)
        return 2
    try:
        report = data.fetch(datasets) if args.action == "fetch" else data.verify(datasets)
    except data.DataError as err:
        _print_error(err)
        return 1
    print(f"data directory: {data.data_dir().resolve()}  (set {data.DATA_DIR_ENV} to change)")
    for status in report:
        mark = "ok  " if status.ok else "FAIL"
        print(f"{mark} {status.dataset:16s} {status.file:26s} {status.source}")
        if not status.ok:
            print(f"     {status.detail}")
    failed = [s for s in report if not s.ok]
    summary = "all verified" if not failed else f"{len(failed)} file(s) missing or corrupt"
    print(summary)
    return 1 if failed else 0


def _expected_errors() -> tuple[type[Exception], ...]:
    """Faults of the input or the machine, each told in one ``error:`` line (exit 2)."""
    from sgsc.experiments.train import CheckpointError
    from sgsc.fileformat.atomic import WriteError

    return (ValueError, data.DataError, WriteError, CheckpointError)


def _cmd_run(args: argparse.Namespace) -> int:
    from sgsc.experiments import runs

    if args.threads < 1:
        print("error: --threads must be a positive count", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    expected = _expected_errors()
    overrides = {"epochs": args.epochs, "gamma": args.gamma, "lambda_pres": args.lambda_pres,
                 "l1_weights": args.l1_weights, "lr": args.lr, "lr_quant": args.lr_quant,
                 "batch_size": args.batch_size, "init_bits": args.init_bits}
    try:
        result = runs.run(args.method, args.data, seed=args.seed, out_dir=args.out,
                          device=args.device, progress=not args.no_progress,
                          float_overrides={"epochs": args.float_epochs},
                          **overrides)
    except expected as err:
        _print_error(err)
        return 2
    print(json.dumps(result))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from sgsc.experiments import profiles
    from sgsc.fileformat import atomic
    from sgsc.reporting import report

    try:
        folder = profiles.profile_report_dir(args.profile, args.reports)
        path = report.build_report(folder, args.profile, provenance.build_info())
        if args.readme:
            changed = report.write_readme_results(args.readme, folder)
    except (ValueError, FileNotFoundError, atomic.WriteError) as err:
        _print_error(err)
        return 2
    print(f"report written to {path}")
    if args.readme:
        print(f"{args.readme}: results {'rewritten' if changed else 'unchanged'}")
    return 0


def _add_data_parser(commands: argparse._SubParsersAction) -> None:
    data_cmd = commands.add_parser("data", allow_abbrev=False,
                                   help="verify or download the data sets",
                                   description="Verify (sha256) or download the data sets.")
    data_cmd.add_argument("action", choices=("verify", "fetch"),
                          help="verify: check local copies, exit 1 on any missing or "
                               "corrupt file; fetch: download what is missing, then verify")
    data_cmd.add_argument("datasets", nargs="*", metavar="DATASET",
                          help=f"any of {', '.join(data.DATASETS)} (default: all)")
    data_cmd.set_defaults(handler=_cmd_data)


def _add_run_parser(commands: argparse._SubParsersAction) -> None:
    run_cmd = commands.add_parser(
        "run", allow_abbrev=False,
        help="train one method on one data set and print its result as JSON",
        description="Train METHOD on --data (float reference first for compressed methods), "
                    "select on validation, export the packed model, print one JSON line.")
    run_cmd.add_argument("method", metavar="METHOD",
                         help="float, sc, sc-rate (sc with an entropy-coded size term), "
                              "sgsc, its halves sc-pres (preservation loss only) "
                              "and sc-feedback (feedback only), or a baseline: uniform-ptq-B, "
                              "uniform-qat-B (B in 2, 3, 4, 6, 8, 16), diffq, cbtpe, cbtpe-tpe")
    run_cmd.add_argument("--data", default="digits", help="digits (default), mnist, names or "
                                                          "tinyshakespeare")
    run_cmd.add_argument("--seed", type=int, default=0)
    run_cmd.add_argument("--epochs", type=int, help="epochs of the method (default per data)")
    run_cmd.add_argument("--float-epochs", type=int, help="epochs of the float reference")
    run_cmd.add_argument("--batch-size", type=int)
    run_cmd.add_argument("--gamma", type=float, help="weight of the size term Q")
    run_cmd.add_argument("--init-bits", type=float,
                         help="starting bit depth of every channel (default 8)")
    run_cmd.add_argument("--lambda-pres", type=float, help="weight of the preservation loss")
    run_cmd.add_argument("--l1-weights", type=float,
                         help="weight of the L1 term, mean |w| over every weight matrix")
    run_cmd.add_argument("--lr", type=float, help="learning rate of the weights")
    run_cmd.add_argument("--lr-quant", type=float, help="learning rate of bit depths and exponents")
    run_cmd.add_argument("--out", default="runs", help="run folder (checkpoints, results)")
    run_cmd.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    run_cmd.add_argument("--threads", type=int, default=provenance.DEFAULT_THREADS,
                         help=f"torch CPU threads (default {provenance.DEFAULT_THREADS}, as in "
                              "the notebooks and sweeps; results and run folders are keyed by "
                              "it, since on a CPU it changes the numbers)")
    run_cmd.add_argument("--no-progress", action="store_true", help="no progress bars")
    run_cmd.set_defaults(handler=_cmd_run)


def _add_report_parser(commands: argparse._SubParsersAction) -> None:
    report_cmd = commands.add_parser(
        "report", allow_abbrev=False,
        help="build reports/<profile>/index.html from the notebooks' metrics",
        description="Render reports/<profile>/index.html from the metrics files the "
                    "notebooks wrote (tables, figures, provenance, timings).")
    report_cmd.add_argument("--profile", default="paper", help="quick, paper or full")
    report_cmd.add_argument("--reports", default="reports",
                            help="folder holding one sub-folder per profile")
    report_cmd.add_argument("--readme", metavar="FILE", default=None,
                            help="also write the answer's sentences into FILE's results "
                                 "block (README.md)")
    report_cmd.set_defaults(handler=_cmd_report)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from sgsc.experiments import sweep
    from sgsc.fileformat import atomic

    try:
        grid = sweep.load_grid(args.grid)
        if args.out:
            grid.out = args.out
        done, todo = sweep.plan(grid)
    except (sweep.GridError, ValueError) as err:
        _print_error(err)
        return 2
    print(f"{len(done) + len(todo)} runs in {args.grid}: {len(done)} cached, {len(todo)} to run")
    if args.dry_run:
        for spec in todo:
            print(f"  {spec.key[:12]}  {spec.label}")
        return 0
    if not todo:
        return 0
    try:
        atomic.ensure_writable(grid.out)
    except atomic.WriteError as err:
        _print_error(err)
        return 2
    client = sweep.make_client(args.workers, args.scheduler)
    try:
        report = sweep.run_sweep(grid, client, progress=not args.no_progress)
    finally:
        sweep.close_client(client)
    for line in sweep.summary(report, grid):
        print(line)
    return 1 if report.failed else 0


def _add_sweep_parser(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser(
        "sweep", allow_abbrev=False,
        help="run a grid of runs (YAML) on Dask, skipping cached results",
        description="Expand GRID.yaml into runs, skip those with a result in "
                    "<out>/sweep/<key>.json, run the rest on a local Dask cluster or an "
                    "existing scheduler. Rerun the command to finish an interrupted sweep.")
    cmd.add_argument("grid", metavar="GRID.yaml", help="grid file (see examples/grids/)")
    cmd.add_argument("--workers", type=int, help="local worker processes (default: cores)")
    cmd.add_argument("--scheduler", help="address of a running scheduler, e.g. "
                                         "tcp://host:8786 (default: start a local cluster)")
    cmd.add_argument("--out", help="override the grid's out folder")
    cmd.add_argument("--dry-run", action="store_true", help="list the runs to do, run none")
    cmd.add_argument("--no-progress", action="store_true", help="no progress bar")
    cmd.set_defaults(handler=_cmd_sweep)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    import time

    from sgsc.experiments import profiles, studies, sweep
    from sgsc.fileformat import atomic

    try:
        prof = profiles.check_parameters(profile=args.profile, device=args.device)
        grids = studies.profile_grids(prof, f"{args.out}/{args.profile}", args.parts,
                                      args.device)
        atomic.ensure_writable(args.out)
    except (ValueError, sweep.GridError, atomic.WriteError) as err:
        _print_error(err)
        return 2
    todo = [s for grid in grids for s in sweep.plan(grid)[1]]
    print(f"{len(todo)} runs to train for profile {args.profile} ({', '.join(args.parts)})")
    if not todo:
        return 0
    client = sweep.make_client(args.workers, None)
    failed, start = 0, time.perf_counter()
    try:
        for grid in grids:
            report = sweep.run_sweep(grid, client, progress=not args.no_progress)
            failed += len(report.failed)
            for line in sweep.summary(report, grid):
                print(line)
    finally:
        sweep.close_client(client)
    print(f"trained in {time.perf_counter() - start:.0f} s on {args.workers} workers")
    return 1 if failed else 0


def _add_pretrain_parser(commands: argparse._SubParsersAction) -> None:
    from sgsc.experiments.studies import PARTS

    cmd = commands.add_parser(
        "pretrain", allow_abbrev=False,
        help="train a profile's notebook runs on parallel workers before the notebooks",
        description="Train the runs of notebooks 01 and 02 of --profile on a local Dask "
                    "cluster (one single-threaded worker per --workers), into the run "
                    "folders the notebooks use; run_all.sh --jobs N calls this first.")
    cmd.add_argument("--profile", default="paper", help="quick, paper or full")
    cmd.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    cmd.add_argument("--out", default="runs", help="run cache root (default runs/)")
    cmd.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    cmd.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS,
                     help="which runs (default: all)")
    cmd.add_argument("--no-progress", action="store_true", help="no progress bars")
    cmd.set_defaults(handler=_cmd_pretrain)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from sgsc.fileformat import export

    try:
        budget = export.byte_budget(args.file)
    except (OSError, ValueError) as err:
        _print_error(err)
        return 2
    if args.json:
        print(json.dumps(budget))
        return 0
    total = budget["file_bytes"]
    print(f"{budget['file']}: {total:,} bytes, format {budget['format']}, "
          f"{budget['coding']}, exponents {budget['exponents']}, BatchNorm folded: "
          f"{', '.join(budget['folded']) or 'none'}")
    print("\nsection                                    bytes   share")
    for name, size in budget["sections"].items():
        print(f"{name:40s} {size:8,} {size / total:7.1%}")
    print("\nlayer        rows  mean b   codes  packed B  entropy floor B  best model B  "
          "header B")
    for layer in budget["layers"]:
        print(f"{layer['layer']:12s} {layer['rows']:4d} {layer['mean_bits']:7.2f} "
              f"{layer['codes']:7,} {layer['packed_bytes']:9.1f} "
              f"{layer['entropy_floor_bytes']:16.1f} {layer['best_model_bytes']:13.1f} "
              f"{layer['header_bytes']:9.1f}")
    if budget["other_tensors"]:
        print("\nother tensor                               dtype     elements    bytes")
        for t in budget["other_tensors"]:
            print(f"{t['tensor']:42s} {t['dtype']:9s} {t['elements']:8,} {t['bytes']:8,}")
    return 0


def _add_inspect_parser(commands: argparse._SubParsersAction) -> None:
    inspect_cmd = commands.add_parser(
        "inspect", allow_abbrev=False, help="where the bytes of a model file go",
        description="The byte budget of a packed model file: per section (framing, "
                    "metadata, exponents, bit depths and codes, other tensors, checksum) "
                    "and per quantized layer (rows, mean bit depth, codes, the bytes packing "
                    "spends on them against their empirical entropy and the best model's "
                    "estimate, the headers).")
    inspect_cmd.add_argument("file", help="a .sgsc file")
    inspect_cmd.add_argument("--json", action="store_true", help="print the budget as JSON")
    inspect_cmd.set_defaults(handler=_cmd_inspect)


def _cmd_encode(args: argparse.Namespace) -> int:
    from sgsc.fileformat import export

    try:
        if Path(args.out).resolve() == Path(args.file).resolve():
            raise ValueError(f"{args.out} is the file being read; write the new encoding "
                             "elsewhere (a grid or narrowed one cannot be undone), then move it")
        before = export.read_container(Path(args.file))  # its size and coding only
        sc = export.reopen_compressed(args.file)
        info = export.save_compressed(sc, args.out, coding=args.coding,
                                      precision=args.precision)
    except _expected_errors() + (OSError,) as err:
        _print_error(err)
        return 2
    change = info.file_bytes / before.file_bytes - 1
    fallback = "" if info.coding == args.coding else \
        f"; {args.coding} would not be smaller, so it stays {info.coding}"
    print(f"{args.file}: {before.file_bytes:,} bytes, {before.coding} -> {args.out}: "
          f"{info.file_bytes:,} bytes, {info.coding}, {args.precision} precision "
          f"({abs(change) * 100:.1f} % {'smaller' if change <= 0 else 'larger'}{fallback})")
    return 0


def _add_encode_parser(commands: argparse._SubParsersAction) -> None:
    from sgsc.fileformat.export import CODINGS, PRECISIONS

    cmd = commands.add_parser(
        "encode", allow_abbrev=False, help="write a model file in another coding",
        description="Rewrite a model file (any format this version reads) in another coding "
                    "or precision, from the model it decodes to: the same codes (each row at "
                    "the fewest bits they need) and exponents; with --precision grid, "
                    "exponents on a grid of 2^-10; with --precision narrow, that and other "
                    "tensors as float16 (with either, the outputs move by that rounding: "
                    "check the accuracy). Prints both sizes.")
    cmd.add_argument("file", help="a .sgsc file to read")
    cmd.add_argument("out", help="the .sgsc file to write (not the one read)")
    cmd.add_argument("--coding", choices=list(CODINGS), default="entropy",
                     help="packed, lzma or entropy (default; kept packed where not smaller)")
    cmd.add_argument("--precision", choices=list(PRECISIONS), default="exact",
                     help="exact (default), grid or narrow")
    cmd.set_defaults(handler=_cmd_encode)


def _cmd_verify(args: argparse.Namespace) -> int:
    from sgsc.experiments import store

    rows = []
    try:  # a line per file as it is checked: the whole report takes minutes
        for row in store.verify_models(args.report, sample=args.sample, seed=args.seed,
                                       tolerance=args.tolerance, data=args.data):
            rows.append(row)
            metric = (f"test acc {row['test_acc']:.4f} (report {row['expected_acc']:.4f})"
                      if "test_acc" in row else
                      f"test loss {row['test_loss']:.4f} (report {row['expected_loss']:.4f})")
            print(f"{'ok  ' if row['ok'] else 'FAIL'} {row['file']}: "
                  f"{row['storage_bytes']:,} B (report {row['expected_bytes']:,} B), {metric}",
                  flush=True)
    except (OSError, ValueError, data.DataError) as err:
        _print_error(err)
        return 2
    failed = sum(not row["ok"] for row in rows)
    print(f"{len(rows) - failed} of {len(rows)} model files match the report")
    return 1 if failed else 0


def _add_verify_parser(commands: argparse._SubParsersAction) -> None:
    verify_cmd = commands.add_parser(
        "verify", allow_abbrev=False, help="check a report's model files against it",
        description="Reload every model file a report keeps (REPORT/models/), re-measure "
                    "its size and test metric, and compare them with the report's "
                    "manifest; exit 1 when any differs.")
    verify_cmd.add_argument("report", help="a report folder, e.g. reports/paper")
    verify_cmd.add_argument("--sample", type=int, default=None,
                            help="check a seeded sample of this many files (default: all)")
    verify_cmd.add_argument("--seed", type=int, default=0, help="seed of the sample")
    verify_cmd.add_argument("--data", default=None,
                            help="only the files of this data set, e.g. mnist or names")
    verify_cmd.add_argument("--tolerance", type=int, default=2,
                            help="test examples a reloaded model may classify otherwise "
                                 "(another CPU rounds borderline logits; default 2)")
    verify_cmd.set_defaults(handler=_cmd_verify)


def _cmd_regimes(args: argparse.Namespace) -> int:
    from sgsc.experiments import profiles, regimes, studies

    try:
        prof = profiles.check_parameters(profile=args.profile, device=args.device)
        names = args.regime or list(prof.regimes)
        unknown = [n for n in names if n not in regimes.REGIMES]
        if unknown:
            raise ValueError(f"unknown regime(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(regimes.REGIMES)}")
        seeds = _study_seeds(args.seeds, prof.regime_seeds)
        out = args.out or f"runs/{args.profile}"
        log = functools.partial(print, flush=True)
        regimes.train_study(names, seeds, out, args.workers,
                            dict(prof.regime_budget), log=log, device=args.device)
        if args.extras:  # 07's runs on the regime budget, 08's on the point's own
            files = regimes.file_requests(prof.file_regime, prof.file_seeds,
                                          prof.file_rate_gammas, prof.file_long)
            regimes.train(files, out, args.workers, dict(prof.regime_budget), log=log,
                          device=args.device)
            for point in (prof.operating_point, prof.text_operating_point):
                regimes.train(studies.operating_point_requests(point), out, args.workers,
                              studies.operating_point_budget(point), log=log,
                              device=args.device)
    except _expected_errors() as err:
        _print_error(err)
        return 2
    return 0


def _study_seeds(asked: list[int] | None, registered: Sequence[int]) -> list[int]:
    """The seeds ``--seeds`` names, checked: the profile's own, its first among them (the
    study tunes on the first seed, so another first seed would be another study)."""
    if not asked:
        return list(registered)
    seeds = [s for s in registered if s in asked]  # the profile's order: its first tunes
    if not set(asked) <= set(registered) or registered[0] not in seeds:
        raise ValueError(f"--seeds must be among the profile's regime seeds "
                         f"({', '.join(map(str, registered))}) and include "
                         f"{registered[0]}, the seed tuning runs on; got "
                         f"{', '.join(map(str, asked))}")
    return seeds


def _add_regimes_parser(commands: argparse._SubParsersAction) -> None:
    from sgsc.experiments.regimes import default_workers

    cmd = commands.add_parser(
        "regimes", allow_abbrev=False,
        help="train the regime study (docs/PREREGISTRATION.md) that 06_regimes reads",
        description="Train the regime study of a profile on worker processes: per regime "
                    "the floats, the default sc frontier of seed 0 and both methods' "
                    "tuning trials, then both frontiers on every seed with the settings "
                    "chosen on validation. Finished runs are reopened, not trained again.")
    cmd.add_argument("--profile", default="paper", help="quick, paper or full")
    cmd.add_argument("--regime", action="append", default=[],
                     help="only this regime (repeatable; default: the profile's)")
    cmd.add_argument("--workers", type=int, default=default_workers(),
                     help="single-threaded worker processes (default: one per core)")
    cmd.add_argument("--out", default=None, help="run folder (default runs/<profile>)")
    cmd.add_argument("--seeds", type=int, nargs="+", default=None,
                     help="only these of the profile's seeds, its first included (default: "
                          "all; 07_file_budget reads 0 1 2, 06_regimes needs all)")
    cmd.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    cmd.add_argument("--extras", action="store_true",
                     help="then the runs of 07_file_budget (sc-rate, longer budgets) and "
                          "08_operating_point (MNIST and the transformer) too")
    cmd.set_defaults(handler=_cmd_regimes)


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per task, each with its own ``--help``."""
    parser = argparse.ArgumentParser(
        prog="python -m sgsc", allow_abbrev=False,
        description="Safety-Guided Self-Compression: data, training runs and reports.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for add in (_add_data_parser, _add_run_parser, _add_report_parser, _add_sweep_parser,
                _add_pretrain_parser, _add_inspect_parser, _add_encode_parser,
                _add_verify_parser,
                _add_regimes_parser):
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m sgsc``: parse ``argv`` (default ``sys.argv``), run the command, return
    its exit status."""
    args = build_parser().parse_args(argv)
    return args.handler(args)
