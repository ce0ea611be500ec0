"""The regime study (docs/PREREGISTRATION.md): sgsc against sc at equal size, in four data
regimes, with equal tuning effort -- the plan, its training, and the tables it leaves.

Per regime: a float reference per seed; on seed 0 at the middle gamma, five trials of each
method's own settings beside its defaults, scored on validation against the default sc
frontier of seed 0 at the same size (:func:`choose_settings`); then sc's and sgsc's
frontiers on every seed with the settings chosen.  :func:`train` runs a stage's requests
on worker processes (a seed's float first, so no two workers train one float model);
``python -m sgsc regimes`` trains the whole study, and notebook ``06_regimes`` reopens it.
"""

from __future__ import annotations

import functools
import heapq
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from sgsc.experiments import defaults, harness, runs
from sgsc.reporting import compare

METHODS = ("sc", "sgsc")
Log = Callable[[str], None]  # where progress lines go (print, a file, or nowhere)


@dataclass(frozen=True)
class Regime:
    """One data regime of the study and its pre-registered plan."""

    name: str  # a data set of sgsc.experiments.defaults.DEFAULTS
    sc_gammas: tuple[float, ...]
    sgsc_gammas: tuple[float, ...]
    middle: float  # the gamma tuning runs at
    trials: dict[str, tuple[dict[str, Any], ...]] = field(default_factory=dict)

    def gammas(self, method: str) -> tuple[float, ...]:
        """The registered gammas of ``method``'s frontier."""
        return self.sc_gammas if method == "sc" else self.sgsc_gammas


def _sgsc_trials(data: str) -> tuple[dict[str, Any], ...]:
    """sgsc's five trials: the preservation weight both ways, no L1, a laxer feedback
    threshold, and a preservation set three times the regime's default size."""
    feedback = defaults.SGSC_EXTRA["feedback"]
    return ({"lambda_pres": 0.25}, {"lambda_pres": 4.0}, {"l1_weights": 0.0},
            {"feedback": feedback | {"threshold": 0.2}},
            {"preservation_size": 3 * defaults.DEFAULTS[data]["preservation_size"]})


MNIST_GAMMAS = {"sc_gammas": (0.005, 0.015, 0.05, 0.15, 0.4),
                "sgsc_gammas": (0.015, 0.05, 0.15, 0.4), "middle": 0.05}
MNIST_SC_TRIALS = ({"lr_quant": 0.1}, {"lr_quant": 0.25}, {"lr_quant": 1.0}, {"init_bits": 4.0},
                   {"init_bits": 6.0})
REGIMES = {
    "digits": Regime("digits", (0.01, 0.03, 0.1, 0.3, 1.0), (0.03, 0.1, 0.3, 1.0), 0.1,
                     {"sc": ({"lr_quant": 0.01}, {"lr_quant": 0.2}, {"lr_quant": 0.5},
                             {"init_bits": 4.0}, {"init_bits": 6.0}),
                      "sgsc": _sgsc_trials("digits")}),
    **{name: Regime(name, **MNIST_GAMMAS, trials={"sc": MNIST_SC_TRIALS,
                                                    "sgsc": _sgsc_trials(name)})
       for name in ("mnist-1k", "mnist-4k", "mnist")},
}


def train_rows(regime: str) -> int:
    """Training images of a regime (the x axis of the study's figure)."""
    return len(harness.load_splits(regime).train)


# ----------------------------------------------------------------------------- the plan


def request(data: str, method: str, seed: int, gamma: float | None = None, *,
            model: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """One run: what :func:`train` and ``store.run_grid`` need to run or reopen it.
    ``model``: fields of the data set's model config to override (e.g. a one-layer
    transformer for a quick profile); it travels with the request, since a worker process
    does not see :func:`sgsc.experiments.defaults.configure_model` calls of its parent."""
    settings = dict(overrides) | ({"gamma": gamma} if gamma is not None else {})
    spec = {"data": data, "method": method, "seed": seed, "overrides": settings}
    return spec | ({"model": dict(model)} if model else {})


def file_requests(data: str, seeds: Sequence[int], rate_gammas: Sequence[float],
                  long: Sequence[dict[str, Any]]) -> list[dict]:
    """07_file_budget's runs beside the study's frontiers: sc-rate at ``rate_gammas``, and
    for each longer budget of ``long`` each method of its ``"gammas"`` (method -> gammas)
    at its gammas for its ``"epochs"`` compression epochs -- one setting's seeds together,
    so that :func:`train`, stopped half way, leaves whole settings."""
    runs = [request(data, "sc-rate", s, g) for g in rate_gammas for s in seeds]
    return runs + [request(data, method, s, g, epochs=budget["epochs"])
                   for budget in long for method, gammas in budget["gammas"].items()
                   for g in gammas for s in seeds]


def stage_one(regime: Regime, seeds: Sequence[int]) -> list[dict]:
    """Floats of every seed, the default sc frontier of seed 0 (the tuning's yardstick),
    the defaults of both methods at the middle gamma and each method's trials there."""
    out = [request(regime.name, "float", s) for s in seeds]
    out += [request(regime.name, "sc", seeds[0], g) for g in regime.sc_gammas]
    out += [request(regime.name, "sgsc", seeds[0], regime.middle)]
    for method in METHODS:
        out += [request(regime.name, method, seeds[0], regime.middle, **trial)
                for trial in regime.trials.get(method, ())]
    return out


def stage_two(regime: Regime, chosen: dict[str, dict], seeds: Sequence[int]) -> list[dict]:
    """Both methods' frontiers on every seed, with the settings tuning chose."""
    return [request(regime.name, method, s, g, **chosen.get(method, {}))
            for method in METHODS for s in seeds for g in regime.gammas(method)]


def choose_settings(regime: Regime, results: Sequence[dict]
                    ) -> tuple[dict[str, dict], list[dict]]:
    """Each method's settings (overrides beyond gamma), and the trial table: every trial
    at the middle gamma on seed 0 (the default included), its validation accuracy, size,
    and its score -- validation accuracy minus the default sc frontier's of seed 0 at the
    same size (log-size interpolation; None outside that frontier's range)."""
    seed = min(r["seed"] for r in results)
    yardstick = [r for r in results if r["method"] == "sc" and r["seed"] == seed
                 and r["data"] == regime.name and not _trial_of(r, regime)]
    rows, chosen = [], {}
    for method in METHODS:
        candidates = [{}, *regime.trials.get(method, ())]
        best, best_score = {}, None
        for trial in candidates:
            match = [r for r in results if r["method"] == method and r["seed"] == seed
                     and r["data"] == regime.name and _gamma(r) == regime.middle
                     and _trial_of(r, regime) == trial]
            if not match:
                continue
            run = match[0]
            reference = compare.interpolate_log_size(
                [(r["storage_bytes"], r["val_acc"]) for r in yardstick], run["storage_bytes"])
            score = None if reference is None else run["val_acc"] - reference
            rows.append({"regime": regime.name, "method": method,
                         "setting": _describe(trial), "gamma": regime.middle, "seed": seed,
                         "val_acc": run["val_acc"], "storage_bytes": run["storage_bytes"],
                         "val_gain_over_sc_frontier": score})
            if score is not None and (best_score is None or score > best_score):
                best, best_score = trial, score
        chosen[method] = best
        for row in rows:
            if row["method"] == method:
                row["chosen"] = row["setting"] == _describe(best)
    return chosen, rows


def _gamma(result: dict) -> float | None:
    return (result.get("params") or {}).get("gamma")


def _trial_of(result: dict, regime: Regime) -> dict[str, Any]:
    """Which trial of its method a result is ({} for the defaults).  A trial's setting is
    a training setting (in ``params``) or the preservation set's size (beside them)."""
    params = result.get("params") or {}
    default_size = defaults.DEFAULTS[regime.name].get("preservation_size")
    for trial in regime.trials.get(result["method"], ()):
        if all((params[k] if k in params else result.get(k, default_size)) == v
               for k, v in trial.items()):
            return trial
    return {}


def _describe(trial: dict[str, Any]) -> str:
    if not trial:
        return "defaults"
    parts = []
    for key, value in trial.items():
        if isinstance(value, dict):  # feedback: name the field that differs
            base = defaults.SGSC_EXTRA[key]
            value = ", ".join(f"{k}={v}" for k, v in value.items() if base.get(k) != v)
            parts.append(f"{key}: {value}")
        else:
            parts.append(f"{key}={value}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- training


def _run(spec: dict, out_dir: str, budget: dict[str, int | None], device: str,
         reopen_only: bool = False) -> dict | None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a worker's runs are single-threaded (part of a run's key)
    try:
        return _run_one_thread(spec, out_dir, budget, device, reopen_only)
    finally:
        torch.set_num_threads(threads)  # reopening in the caller's process leaves it as it was


def _run_one_thread(spec: dict, out_dir: str, budget: dict[str, int | None], device: str,
                    reopen_only: bool) -> dict | None:
    float_budget = {"epochs": budget.get("float_epochs")} if budget.get("float_epochs") else {}
    settings = dict(spec["overrides"])
    if budget.get("epochs") and spec["method"] != "float":
        # a request's own epochs win over the budget (07's longer runs)
        settings.setdefault("epochs", budget["epochs"])
    if spec["method"] == "float":
        float_budget |= settings
        settings = {}
    with defaults.model_overrides(spec["data"], spec.get("model")):
        return runs.run(spec["method"], spec["data"], seed=spec["seed"], out_dir=out_dir,
                        device=device, progress=False, float_overrides=float_budget or None,
                        reopen_only=reopen_only, **settings)


def train(requests: Iterable[dict], out_dir: str, workers: int = 1,
          budget: dict[str, int | None] | None = None,
          log: Log = print, device: str = "auto", train_missing: bool = True
          ) -> list[dict | None]:
    """Run (or reopen) every request on ``workers`` single-threaded processes, each seed's
    float reference before its other runs (:func:`schedule`), so that no two workers ever
    train the same float model, and otherwise in the requests' order; returns the results
    in that order.
    ``device``: auto, cpu or cuda (every worker uses it; not part of a run's key).
    ``train_missing=False`` trains nothing: a run that has not finished gives None in
    its place."""
    requests = list(requests)
    budget = budget or {}
    if not train_missing:
        return [_run(spec, out_dir, budget, device, reopen_only=True) for spec in requests]
    run_one = functools.partial(_run, out_dir=out_dir, budget=budget, device=device)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return schedule(pool, requests, run_one, log, slots=workers)


def schedule(pool: Executor, requests: Sequence[dict], run_one: Callable[[dict], dict],
             log: Log = print, slots: int | None = None) -> list[dict]:
    """Run ``requests`` on ``pool`` with ``run_one``, a seed's float before its other runs,
    and return the results in the requests' order.

    Every float (and one per data set and seed that needs one but was not asked for) goes
    first; a seed's other runs become ready as soon as its float has finished -- not when
    all floats have -- so no worker idles while another trains the last float.  With
    ``slots`` (the pool's workers) at most that many runs are in flight, and a free worker
    takes the *earliest* ready request: a study stopped half way has finished whole groups
    where its requests list a setting's seeds together, not each seed's first settings
    (a pool's own queue would run them in the order their floats happened to finish).
    ``slots=None`` hands every ready run to the pool at once."""
    def key(spec: dict) -> tuple[str, int]:
        return spec["data"], spec["seed"]

    floats = [i for i, r in enumerate(requests) if r["method"] == "float"]
    asked = {key(requests[i]) for i in floats}
    extra = {}  # data set and seed -> a float request nobody asked for
    for r in requests:
        if key(r) not in asked:
            extra.setdefault(key(r), request(r["data"], "float", r["seed"], model=r.get("model")))
    waiting: dict[tuple[str, int], list[int]] = {}
    for i, r in enumerate(requests):
        if r["method"] != "float":
            waiting.setdefault(key(r), []).append(i)
    queued_floats: list[tuple[int | None, dict]] = (
        [(i, requests[i]) for i in floats] + [(None, spec) for spec in extra.values()])
    ready: list[int] = []  # a heap of request indices whose seed's float has finished
    pending: dict[Future, tuple[int | None, dict]] = {}

    def fill() -> None:
        while (queued_floats or ready) and (slots is None or len(pending) < slots):
            if queued_floats:
                i, spec = queued_floats.pop(0)
            else:
                i = heapq.heappop(ready)
                spec = requests[i]
            pending[pool.submit(run_one, spec)] = (i, spec)

    fill()
    results: dict[int, dict] = {}
    while pending:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            i, spec = pending.pop(future)
            result = future.result()
            if i is not None:
                results[i] = result
            _log_result(log, spec, result)
            if spec["method"] == "float":
                for j in waiting.pop(key(spec), []):
                    heapq.heappush(ready, j)
        fill()
    return [results[i] for i in range(len(requests))]


def _log_result(log: Log, spec: dict, result: dict) -> None:
    val = next((f"{k} {result[k]}" for k in ("val_acc", "val_loss")
                if result.get(k) is not None), "")
    log(f"{spec['data']} {spec['method']} s{spec['seed']} {spec['overrides'] or ''}: "
        f"{result.get('storage_bytes')} B, {val}, {result.get('train_s')} s"
        f"{' (reopened)' if result.get('reopened') else ''}")


def default_workers() -> int:
    """One single-threaded worker per core."""
    return max(1, os.cpu_count() or 1)


def train_study(regime_names: Sequence[str], seeds: Sequence[int], out_dir: str,
                workers: int = 1, budget: dict[str, int | None] | None = None,
                log: Log = print, device: str = "auto") -> dict[str, dict[str, dict]]:
    """The whole study: stage one in every regime, the settings tuning chose, then stage
    two; returns the chosen settings per regime and method."""
    plans = {name: REGIMES[name] for name in regime_names}
    first = [r for regime in plans.values() for r in stage_one(regime, seeds)]
    results = train(first, out_dir, workers, budget, log, device)
    chosen = {name: choose_settings(regime, [r for r in results if r["data"] == name])[0]
              for name, regime in plans.items()}
    for name, settings in chosen.items():
        log(f"{name}: chosen {settings}")
    second = [r for name, regime in plans.items() for r in stage_two(regime, chosen[name],
                                                                     seeds)]
    train(second, out_dir, workers, budget, log, device)
    return chosen


@dataclass
class RegimeRuns:
    """What one regime's study holds: its finished runs (both stages), each method's chosen
    settings and the tuning table -- or, where runs are missing, which ones."""

    results: list[dict]
    chosen: dict[str, dict]
    tuning: list[dict]
    missing: list[dict]  # one row per run not finished: stage, method, seed, overrides


def regime_runs(regime: Regime, seeds: Sequence[int], out_dir: str, workers: int = 1,
                budget: dict[str, int | None] | None = None, device: str = "auto",
                train_missing: bool = True, log: Log = print) -> RegimeRuns:
    """Both stages of one regime: trained where missing, or with ``train_missing=False``
    only reopened -- then a regime with any run missing lists them and is left out of
    every computation (docs/PREREGISTRATION.md); stage two's runs are not planned until
    stage one has finished, since they depend on its choice."""
    plan = stage_one(regime, seeds)
    first = train(plan, out_dir, workers, budget, log, device, train_missing)
    missing = _missing("one", plan, first)
    if missing:
        return RegimeRuns([r for r in first if r is not None], {}, [],
                          missing + [{"regime": regime.name, "stage": "two", "method": "all",
                                      "seed": None, "overrides": "planned after stage one"}])
    chosen, tuning = choose_settings(regime, first)
    plan = stage_two(regime, chosen, seeds)
    second = train(plan, out_dir, workers, budget, log, device, train_missing)
    return RegimeRuns(first + [r for r in second if r is not None], chosen, tuning,
                      _missing("two", plan, second))


def _missing(stage: str, plan: Sequence[dict], results: Sequence[dict | None]) -> list[dict]:
    return [{"regime": spec["data"], "stage": stage, "method": spec["method"],
             "seed": spec["seed"], "overrides": str(spec["overrides"])}
            for spec in _not_finished(plan, results)]


def unfinished(requests: Sequence[dict], results: Sequence[dict | None]) -> list[dict]:
    """A row per request whose result is None (not finished, with ``train_missing=False``),
    for a notebook's missing list: ``request`` names it ("<data> <method> s<seed>
    <overrides>"); ``setting`` is the same without the seed, and ``seed`` the seed, so that
    a report can name a setting once with its seeds."""
    rows = []
    for spec in _not_finished(requests, results):
        overrides = f" {spec['overrides']}" if spec["overrides"] else ""
        rows.append({"request": f"{spec['data']} {spec['method']} s{spec['seed']}{overrides}",
                     "setting": f"{spec['data']} {spec['method']}{overrides}",
                     "seed": spec["seed"]})
    return rows


def _not_finished(requests: Sequence[dict], results: Sequence[dict | None]) -> list[dict]:
    """The requests whose result is None (``results`` in the order of ``requests``)."""
    return [spec for spec, result in zip(requests, results, strict=True) if result is None]


# ----------------------------------------------------------------------------- the tables


def frontier_rows(regime: Regime, results: Sequence[dict], chosen: dict[str, dict]
                  ) -> list[dict]:
    """One row per frontier run of the regime (sc and sgsc with the chosen settings; each
    run once): regime, method, seed, gamma, size, test and validation accuracy, the
    worst class's test accuracy, and training cost."""
    rows, seen = [], set()
    for r in results:
        if r["data"] != regime.name or r["method"] not in METHODS or r["run_dir"] in seen:
            continue
        if _trial_of(r, regime) != chosen.get(r["method"], {}):
            continue
        if _gamma(r) not in regime.gammas(r["method"]):
            continue
        seen.add(r["run_dir"])
        classes = r.get("test_class_acc") or []
        rows.append({"regime": regime.name, "method": r["method"], "seed": r["seed"],
                     "gamma": _gamma(r), "storage_bytes": r["storage_bytes"],
                     "entropy_coded_bytes": r.get("entropy_coded_bytes"),
                     "test_acc": r["test_acc"], "val_acc": r["val_acc"],
                     "worst_class_acc": min(classes) if classes else None,
                     "train_s": r.get("train_s"), "train_flops": r.get("train_flops"),
                     "feedback_attempts": r.get("feedback_attempts"),
                     "feedback_attempt_val_change": r.get("feedback_attempt_val_change"),
                     "run_dir": r["run_dir"], "trained_on": r.get("trained_on"),
                     "threads": r.get("threads")})
    return sorted(rows, key=lambda r: (r["method"], r["seed"], -r["gamma"]))


def run_rows(results: Sequence[dict]) -> list[dict]:
    """Every run of the study once (floats, tuning trials and frontiers): what it is, its
    folder and what it cost -- the study's bill."""
    rows = {}
    for r in results:
        rows.setdefault(r["run_dir"], {
            "regime": r["data"], "method": r["method"], "seed": r["seed"],
            "gamma": _gamma(r) if r["method"] != "float" else None,
            "storage_bytes": r.get("storage_bytes"), "val_acc": r.get("val_acc"),
            "train_s": r.get("train_s"), "train_flops": r.get("train_flops"),
            "run_dir": r["run_dir"]})
    return list(rows.values())


def cost_rows(rows: Sequence[dict]) -> list[dict]:
    """Per regime, what sgsc costs against sc at the same seed and gamma (frontier rows):
    both methods' training seconds and FLOPs summed over those pairs, the time ratio, the
    FLOP ratio, and their quotient -- sgsc's seconds per FLOP over sc's.  Above 1, sgsc
    spends time its FLOPs do not account for (monitor passes, feedback, calibration);
    at or below 1, its extra time is the larger network it keeps and the preservation
    examples each step carries."""
    out = []
    for regime in dict.fromkeys(r["regime"] for r in rows):
        runs_of = {(r["method"], r["seed"], r["gamma"]): r for r in rows
                   if r["regime"] == regime and r.get("train_s") and r.get("train_flops")}
        pairs = [(runs_of["sc", seed, gamma], run)
                 for (method, seed, gamma), run in runs_of.items()
                 if method == "sgsc" and ("sc", seed, gamma) in runs_of]
        if not pairs:
            continue
        sums = {f"{method}_{key}": sum(pair[i][key] for pair in pairs)
                for i, method in enumerate(METHODS) for key in ("train_s", "train_flops")}
        time_ratio = sums["sgsc_train_s"] / sums["sc_train_s"]
        flops_ratio = sums["sgsc_train_flops"] / sums["sc_train_flops"]
        out.append({"regime": regime, "pairs": len(pairs), **sums, "time_ratio": time_ratio,
                    "flops_ratio": flops_ratio, "time_per_flop_ratio": time_ratio / flops_ratio})
    return out


def secondary_rows(regime: str, rows: Sequence[dict]) -> list[dict]:
    """Secondary (labelled so): per gamma of sgsc, the matched difference of test and of
    worst-class accuracy over seeds, and each method's spread over seeds at that gamma."""
    out = []
    for gamma in sorted({r["gamma"] for r in rows if r["method"] == "sgsc"}):
        subset = [r for r in rows if r["method"] == "sc" or r["gamma"] == gamma]
        line = {"regime": regime, "gamma": gamma, "kind": "secondary"}
        for metric in ("test_acc", "worst_class_acc"):
            if any(r.get(metric) is None for r in subset):
                continue
            pairs = [p["difference"] for p in compare.matched_differences(
                subset, "sgsc", "sc", metric=metric) if p["difference"] is not None]
            interval = compare.t_interval(pairs)
            line |= {f"{metric}_difference": interval["mean"],
                     f"{metric}_ci_low": interval["ci_low"],
                     f"{metric}_ci_high": interval["ci_high"], f"{metric}_matched": len(pairs)}
        for method in METHODS:
            values = [r["test_acc"] for r in rows if r["method"] == method
                      and r["gamma"] == gamma]
            line[f"{method}_test_acc_std"] = compare.t_interval(values)["std"]
        out.append(line)
    return out
