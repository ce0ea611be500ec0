"""Sweeps: a grid file expanded into runs, executed on Dask distributed, cached by hash.

A grid file (YAML) names the data set, methods, seeds, the settings to vary (``grid``,
every combination) and those fixed for every run (``fixed``)::

    data: digits
    methods: [float, sc, sgsc]
    seeds: [0, 1]
    grid: {gamma: [0.05, 0.1]}
    fixed: {epochs: 1, float_epochs: 1}
    out: runs

Settings are :class:`sgsc.experiments.train.TrainConfig` fields, plus ``float_epochs`` (the float
reference's budget, ``fixed`` only: a seed's float folder is shared) and
``preservation_size`` (sgsc and its ablation halves only).  Every run has a key, the
sha256 of its parameters and the sgsc version; its result is written atomically to
``<out>/sweep/<key>.json`` (a failure, with its traceback, to ``<key>.failed.json``),
so a rerun skips what is done.

Float references are shared by the runs of a seed, so each seed's float run is one task
and the seed's other runs are submitted when it is done: no two workers ever train the
same float folder.  Outcomes are gathered by the client, so a lost worker takes nothing
but its runs in flight; Dask retries those (``distributed.scheduler.allowed-failures``),
and whatever still fails is recorded and rerun by the next sweep.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import sgsc
from sgsc.experiments import provenance
from sgsc.fileformat import atomic

GRID_KEYS = ("data", "methods", "seeds", "grid", "fixed", "out", "device")
RESERVED = ("seed", "device", "progress")  # set by the sweep itself, not per run
EXTRA_SETTINGS = ("float_epochs", "preservation_size")
CACHE_DIR = "sweep"


class GridError(ValueError):
    """A grid file that cannot be run; the message says what to fix."""


# ----------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: everything :func:`sgsc.experiments.runs.run` needs except where
    and how."""

    method: str
    data: str
    seed: int
    overrides: tuple[tuple[str, Any], ...] = ()
    float_epochs: int | None = None
    preservation_size: int | None = None

    def params(self) -> dict[str, Any]:
        """The parameters that define the run's result (its cache key hashes these)."""
        return {"method": self.method, "data": self.data, "seed": self.seed,
                "overrides": dict(self.overrides), "float_epochs": self.float_epochs,
                "preservation_size": self.preservation_size}

    @property
    def key(self) -> str:
        text = json.dumps({**self.params(), "sgsc": sgsc.__version__}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def label(self) -> str:
        settings = " ".join(f"{k}={v}" for k, v in self.overrides)
        return f"{self.method} {self.data} s{self.seed} {settings}".strip()


@dataclass
class Grid:
    """A validated grid file."""

    data: str
    methods: list[str]
    seeds: list[int]
    grid: dict[str, list] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    out: str = "runs"
    device: str = "auto"

    def specs(self) -> list[RunSpec]:
        """Every distinct run, the float reference of each seed first."""
        names = list(self.grid)
        combos = [dict(zip(names, values, strict=True))
                  for values in itertools.product(*self.grid.values())]
        specs: dict[str, RunSpec] = {}
        for seed in self.seeds:
            specs.setdefault((s := self._spec("float", seed, {})).key, s)
            for method, combo in itertools.product(self.methods, combos):
                spec = self._spec(method, seed, self.fixed | combo)
                specs.setdefault(spec.key, spec)
        return list(specs.values())

    def requested(self, spec: RunSpec) -> bool:
        """Whether the grid asked for ``spec`` (float references run in any case)."""
        return spec.method in self.methods

    def _spec(self, method: str, seed: int, settings: dict[str, Any]) -> RunSpec:
        from sgsc.experiments.store import training_overrides

        settings = dict(settings)
        float_epochs = self.fixed.get("float_epochs")
        settings.pop("float_epochs", None)
        size = settings.pop("preservation_size", None)
        overrides = training_overrides(method, **settings)
        from sgsc.experiments.defaults import SAFETY_METHODS

        return RunSpec(method, self.data, seed, tuple(sorted(overrides.items())),
                       float_epochs, size if method in SAFETY_METHODS else None)


def _settings() -> set[str]:
    from sgsc.experiments.train import TrainConfig

    return {f.name for f in dataclasses.fields(TrainConfig)} - set(RESERVED)


def _need(condition: bool, message: str) -> None:
    if not condition:
        raise GridError(message)


def _check_settings(section: str, values: dict, as_lists: bool) -> None:
    _need(isinstance(values, dict), f"'{section}' must be a mapping of setting: value")
    valid = _settings() | set(EXTRA_SETTINGS)
    unknown = sorted(set(values) - valid)
    _need(not unknown, f"unknown setting(s) in '{section}': {', '.join(map(str, unknown))}; "
                       f"valid: {', '.join(sorted(valid))}")
    for name, value in values.items():
        if as_lists:
            _need(isinstance(value, list) and len(value) > 0,
                  f"grid.{name} must be a non-empty list of values, got {value!r}")


def parse_grid(raw: Any) -> Grid:
    """A :class:`Grid` from the parsed YAML; :class:`GridError` says what is wrong."""
    from sgsc.experiments.defaults import DEFAULTS, METHODS

    _need(isinstance(raw, dict), f"a grid file must be a mapping (data:, methods:, seeds:, "
                                 f"...), not {type(raw).__name__}")
    unknown = sorted(set(map(str, raw)) - set(GRID_KEYS))
    _need(not unknown, f"unknown key(s) {', '.join(unknown)}; valid: {', '.join(GRID_KEYS)}")
    missing = [k for k in ("data", "methods") if k not in raw]
    _need(not missing, f"missing key(s): {', '.join(missing)}")
    _need(isinstance(raw["data"], str) and raw["data"] in DEFAULTS,
          f"unknown data set {raw['data']!r}: data must be one data set name, one of "
          f"{', '.join(DEFAULTS)}")
    methods, seeds = raw["methods"], raw.get("seeds", [0])
    _need(isinstance(methods, list) and methods and all(isinstance(m, str) for m in methods),
          "'methods' must be a non-empty list of method names")
    bad = [m for m in methods if m not in METHODS]
    _need(not bad, f"unknown method(s) {', '.join(map(str, bad))}; choose from "
                   f"{', '.join(METHODS)}")
    _need(raw.get("device", "auto") in ("auto", "cpu", "cuda"),
          f"device must be auto, cpu or cuda, not {raw.get('device')!r}")
    _need(isinstance(seeds, list) and seeds and all(type(s) is int and s >= 0 for s in seeds),
          f"'seeds' must be a non-empty list of integers >= 0, got {seeds!r}")
    out = raw.get("out", "runs")
    _need(isinstance(out, str) and out.strip() != "",
          f"'out' must be a folder path, got {out!r}")
    grid, fixed = raw.get("grid") or {}, raw.get("fixed") or {}
    _check_settings("grid", grid, as_lists=True)
    _check_settings("fixed", fixed, as_lists=False)
    _need("float_epochs" not in grid, "float_epochs may only be in 'fixed': the float "
                                      "reference of a seed is shared by all its runs")
    both = sorted(set(grid) & set(fixed))
    _need(not both, f"setting(s) {', '.join(both)} in both 'grid' and 'fixed'; keep one")
    parsed = Grid(raw["data"], list(methods), list(seeds), dict(grid), dict(fixed),
                  out, str(raw.get("device", "auto")))
    _check_values(parsed)
    return parsed


def _check_values(grid: Grid) -> None:
    """Check every run as :func:`sgsc.experiments.runs.run` would before training, so a bad value
    fails now (on the CPU: the workers, not this machine, check the device)."""
    from sgsc.experiments.harness import check_run

    for spec in grid.specs():
        try:
            check_run(spec.method, spec.data, device="cpu",
                      float_overrides={"epochs": spec.float_epochs},
                      preservation_size=spec.preservation_size, **dict(spec.overrides))
        except (TypeError, ValueError) as err:
            raise GridError(f"{spec.label}: {err}") from err


def load_grid(path: str | os.PathLike[str]) -> Grid:
    """Read and validate a grid file."""
    path = Path(path)
    _need(path.is_file(), f"grid file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise GridError(f"{path} is not valid YAML: {err}") from err
    try:
        return parse_grid(raw)
    except GridError as err:
        raise GridError(f"{path}: {err}") from err


# ---------------------------------------------------------------------------- cache


def cache_dir(out: str | os.PathLike[str]) -> Path:
    return Path(out) / CACHE_DIR


def cached(out: str | os.PathLike[str], spec: RunSpec) -> dict | None:
    """The stored result of ``spec``, or None."""
    path = cache_dir(out) / f"{spec.key}.json"
    return json.loads(path.read_text()) if path.exists() else None


def record(out: str | os.PathLike[str], spec: RunSpec, outcome: dict) -> None:
    """Store an outcome: a result replaces an earlier failure; a failure keeps results."""
    folder = cache_dir(out)
    if outcome["status"] == "done":
        atomic.write_json(outcome, folder / f"{spec.key}.json")
        (folder / f"{spec.key}.failed.json").unlink(missing_ok=True)
    elif not (folder / f"{spec.key}.json").exists():
        atomic.write_json(outcome, folder / f"{spec.key}.failed.json")


# ------------------------------------------------------------------------ execution

Runner = Callable[[RunSpec, str, str], dict]


def run_spec(spec: RunSpec, out: str, device: str) -> dict:
    """Run one spec through :func:`sgsc.experiments.runs.run` (the default runner)."""
    from sgsc.experiments import runs

    extra = {} if spec.preservation_size is None else {
        "preservation_size": spec.preservation_size}
    return runs.run(spec.method, spec.data, seed=spec.seed, out_dir=out, device=device,
                    progress=False, float_overrides={"epochs": spec.float_epochs},
                    **extra, **dict(spec.overrides))


def execute(spec: RunSpec, out: str, device: str, runner: Runner = run_spec,
            reference: dict | None = None) -> dict:
    """Run ``spec`` on a worker and record its outcome; never raises.

    ``reference`` is the outcome of the seed's float run, when ``spec`` depends on it.
    A stored result is returned as it is: a task recomputed after its worker died (with
    its result not yet gathered) does not train again.
    """
    import torch

    if (stored := cached(out, spec)) is not None:
        return stored

    torch.set_num_threads(provenance.DEFAULT_THREADS)  # as every run of the notebooks
    outcome = {"key": spec.key, "spec": spec.params(), "sgsc": sgsc.__version__}
    if reference is not None and reference["status"] != "done":
        outcome |= {"status": "failed", "error": "float reference failed",
                    "traceback": reference.get("traceback", "")}
    else:
        start = time.perf_counter()
        try:
            outcome |= {"status": "done", "result": runner(spec, out, device)}
        except Exception as err:  # recorded, so the other runs go on
            outcome |= {"status": "failed", "error": f"{type(err).__name__}: {err}",
                        "traceback": traceback.format_exc()}
        outcome["wall_s"] = round(time.perf_counter() - start, 2)
    record(out, spec, outcome)
    return outcome


@dataclass
class SweepReport:
    """What a sweep did: outcomes per key, and how many were skipped as cached."""

    outcomes: dict[str, dict] = field(default_factory=dict)
    skipped: int = 0
    wall_s: float = 0.0

    @property
    def failed(self) -> list[dict]:
        return [o for o in self.outcomes.values() if o["status"] != "done"]

    def results(self) -> list[dict]:
        return [o["result"] for o in self.outcomes.values() if o["status"] == "done"]


def plan(grid: Grid) -> tuple[list[RunSpec], list[RunSpec]]:
    """(cached, to run): the grid's specs split by whether a result is stored."""
    specs = grid.specs()
    done = [s for s in specs if cached(grid.out, s) is not None]
    return done, [s for s in specs if cached(grid.out, s) is None]


def _submit(client: Any, grid: Grid, specs: list[RunSpec], runner: Runner,
            references: dict[int, dict]) -> dict:
    """Submit ``specs``; each gets its seed's float outcome (if it ran in this sweep)."""
    return {client.submit(execute, spec, grid.out, grid.device, runner,
                          references.get(spec.seed), pure=False,  # a fresh task each sweep
                          key=f"{spec.method}-{spec.key[:16]}-{uuid.uuid4().hex[:8]}"): spec
            for spec in specs}


def _lost(spec: RunSpec, err: BaseException) -> dict:
    """The outcome of a task that died with its worker (or was cancelled)."""
    return {"key": spec.key, "spec": spec.params(), "sgsc": sgsc.__version__,
            "status": "failed", "error": f"{type(err).__name__}: {err}",
            "traceback": "".join(traceback.format_exception(err))}


def _running(client: Any) -> int:
    try:
        return sum(len(tasks) for tasks in client.processing().values())
    except Exception:  # progress only: never fail a sweep over it
        return 0


def _collect(client: Any, grid: Grid, todo: list[RunSpec], runner: Runner,
             progress: bool) -> dict[str, dict]:
    """Run ``todo``: float references first, then each seed's runs once its reference is
    done (their outcomes stay on the client: a lost worker holds nothing others need)."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    floats = {s.seed for s in todo if s.method == "float"}
    waiting = [s for s in todo if s.method != "float" and s.seed in floats]
    first = [s for s in todo if s.method == "float" or s.seed not in floats]
    futures = _submit(client, grid, first, runner, {})
    pending = as_completed(futures)
    outcomes, failed = {}, 0
    with tqdm(total=len(todo), desc="sweep", unit="run", disable=not progress) as bar:
        for future in pending:
            spec = futures[future]
            try:
                outcome = future.result()
            except Exception as err:
                # A run may finish and store its result just before its worker dies with
                # the result still ungathered: that run is done, not lost.
                outcome = cached(grid.out, spec) or _lost(spec, err)
            record(grid.out, spec, outcome)  # again: the client may not share workers' disk
            outcomes[spec.key] = outcome
            if spec.method == "float":
                ready = [s for s in waiting if s.seed == spec.seed]
                added = _submit(client, grid, ready, runner, {spec.seed: outcome})
                futures |= added
                pending.update(added)
            failed += outcome["status"] != "done"
            bar.update()
            bar.set_postfix(done=bar.n - failed, running=_running(client), failed=failed)
    return outcomes


def run_sweep(grid: Grid, client: Any, runner: Runner = run_spec,
              progress: bool = True) -> SweepReport:
    """Run the grid's uncached specs on ``client``'s cluster; record every outcome."""
    start = time.perf_counter()
    done, todo = plan(grid)
    outcomes = {s.key: cached(grid.out, s) for s in done}
    outcomes |= _collect(client, grid, todo, runner, progress)
    return SweepReport(outcomes, skipped=len(done), wall_s=time.perf_counter() - start)


def make_client(workers: int | None = None, scheduler: str | None = None) -> Any:
    """A Dask client: of the scheduler at ``scheduler``, or of a new LocalCluster with
    ``workers`` single-threaded worker processes (default: one per core)."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler)
    # one task per worker at a time: a long run never waits behind another on a busy worker
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                               processes=True, dashboard_address=None)
    return Client(cluster)


def close_client(client: Any) -> None:
    """Close ``client`` and the LocalCluster it started, if any."""
    cluster = client.cluster
    client.close()
    if cluster is not None:
        cluster.close()


def summary(report: SweepReport, grid: Grid) -> Iterable[str]:
    """Lines for the terminal: counts, then each failure and where its traceback is."""
    yield (f"{len(report.outcomes)} runs: {report.skipped} cached, "
           f"{len(report.outcomes) - report.skipped - len(report.failed)} done now, "
           f"{len(report.failed)} failed, in {report.wall_s:.1f} s; results in "
           f"{cache_dir(grid.out)}")
    for outcome in report.failed:
        yield (f"FAILED {RunSpec(**_spec_args(outcome['spec'])).label}: {outcome['error']} "
               f"(traceback: {cache_dir(grid.out) / (outcome['key'] + '.failed.json')})")


def _spec_args(params: dict) -> dict:
    return params | {"overrides": tuple(sorted(params["overrides"].items()))}


__all__ = ["Grid", "GridError", "RunSpec", "SweepReport", "execute",
           "load_grid", "make_client", "parse_grid", "run_spec", "run_sweep"]
