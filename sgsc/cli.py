"""Command-line interface: `python -m sgsc --help`."""

from __future__ import annotations

import argparse
import sys

from sgsc import data


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
        print(f"error: {err}", file=sys.stderr)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sgsc",
        description="Safety-Guided Self-Compression: data, training runs and reports.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data_cmd = commands.add_parser("data", help="verify or download the data sets",
                                   description="Verify (sha256) or download the data sets.")
    data_cmd.add_argument("action", choices=("verify", "fetch"),
                          help="verify: check local copies, exit 1 on any missing or "
                               "corrupt file; fetch: download what is missing, then verify")
    data_cmd.add_argument("datasets", nargs="*", metavar="DATASET",
                          help=f"any of {', '.join(data.DATASETS)} (default: all)")
    data_cmd.set_defaults(handler=_cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)
