"""CB-TPE: sensitivity-aware mixed-precision and width search with cluster-based TPE.

After Azizi, Nazemi, Fayyazi & Pedram (2023), "Sensitivity-Aware Mixed-Precision
Quantization and Width Optimization of Deep Neural Networks Through Cluster-Based
Tree-Structured Parzen Estimation".  The paper has no public code; this is our reading
of it, with every choice the paper leaves open made explicit here:

1. **Sensitivity** (:mod:`sgsc.experiments.hessian`).  On the float model, in eval mode, on one
   seeded training batch of ``hessian_batch`` examples: Hutchinson's estimator with
   ``hessian_samples`` Rademacher probes gives each conv/linear weight's Hessian trace
   and diagonal.  A layer's sensitivity is its trace per weight (HAWQ-v2's average
   trace); a channel's is its Optimal-Brain-Damage saliency ``1/2 sum_i H_ii w_i^2``.
2. **Hessian-based pruning of the search space.**
   * bits: the least sensitive ``low_fraction`` of the layers may only take widths
     ``min_bits..low_bits``; the others ``min_bits..max_bits`` (2..8 by default);
   * width: for a layer whose channels can be removed (a producer of the model's channel
     graph) the candidate multipliers are bounded above by the smallest multiplier whose
     most salient channels hold ``keep_saliency`` of the layer's saliency: the channels
     beyond it are pruned in every trial.  A multiplier ``m`` keeps the ``ceil(m * C)``
     most salient channels and gives the others 0 bits, so export removes them physically.
     The classifier and layers outside the channel graph keep their width.
3. **Search** with Optuna (per-layer ``bits/<layer>`` int and ``width/<layer>``
   categorical), ``n_trials`` trials after ``n_startup_trials`` random ones, multivariate:
   (a) ``cbtpe-tpe``: Optuna's standard :class:`~optuna.samplers.TPESampler` (good group:
   the best ~10 % of trials); (b) ``cbtpe``: :class:`ClusterTPESampler`, identical except
   for the split: before every trial, 1-D k-means (k = ``n_clusters`` = 3) on the
   objective values of all finished trials gives two thresholds, the bottom of the best
   cluster and the top of the worst; trials above the first are "good" (``l(x)``), below
   the second "bad" (``g(x)``), and the middle band is left out of both densities.
   Repeated configurations count once in that split (TPE re-proposes points of a
   discrete space; copies would fill the good cluster and collapse ``l(x)`` onto one
   point).  For both samplers a repeat is answered from a cache: trials are
   deterministic, so it costs no training but still counts as a trial.
4. **Objective: constrained, enforced by an exact penalty.**  Maximise
   ``val_score - penalty * max(0, bytes / budget - 1)`` where ``val_score`` is validation
   accuracy (or minus the loss in nats for text), ``bytes`` the exact counted storage of
   the candidate, and ``budget`` the counted storage of the same model at uniform
   ``budget_bits`` bits.  So within the budget only accuracy counts, and every 1 % over it
   costs ``penalty`` points.  Each trial fine-tunes the candidate from the float weights
   for ``trial_epochs`` epochs (quantization-aware, widths frozen) on ``trial_train_size``
   training examples and is scored on the full validation split.
5. **Reported**: search wall time, trials, and trials-to-target -- the first trial that is
   within budget with ``val_score >= float val_score - target_drop``.  The best trial's
   configuration is then trained with the data set's full compression budget (as
   ``uniform-qat-B``) and exported; test data is touched only for that final model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.samplers import TPESampler
from optuna.trial import TrialState
from sklearn.cluster import KMeans
from torch import Tensor
from torch.utils.data import TensorDataset

from sgsc.core.compress import QUANTIZABLE
from sgsc.core.tasks import evaluate, score, task_loss
from sgsc.experiments import harness
from sgsc.experiments.baselines.common import (
    Reference,
    packed_result,
    reference,
    refuse,
    split_overrides,
)
from sgsc.experiments.baselines.fixed import FixedBits
from sgsc.experiments.defaults import train_config
from sgsc.experiments.hessian import hutchinson
from sgsc.experiments.train import TrainConfig, Trainer, row_score
from sgsc.fileformat import atomic


@dataclass
class CBTPEConfig:
    """Settings of the search (training settings are the data set's compression budget)."""

    n_trials: int = 24
    n_startup_trials: int = 8
    trial_epochs: int = 1
    trial_train_size: int | None = None  # None: the whole training split
    min_bits: int = 2
    max_bits: int = 8
    low_bits: int = 4  # the widest choice of the least sensitive layers
    low_fraction: float = 0.4  # share of layers, least sensitive first, limited to low_bits
    widths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    keep_saliency: float = 0.99
    budget_bits: int = 3  # budget: the model's size at this uniform width
    penalty: float = 1.0
    target_drop: float = 0.01
    hessian_samples: int = 32
    hessian_batch: int = 256
    n_clusters: int = 3

    def __post_init__(self) -> None:
        self.widths = tuple(float(w) for w in self.widths)
        checks = {
            "n_trials": self.n_trials >= 1, "n_startup_trials": self.n_startup_trials >= 1,
            "trial_epochs": self.trial_epochs >= 1,
            "trial_train_size": self.trial_train_size is None or self.trial_train_size >= 1,
            "min_bits": 1 <= self.min_bits <= self.low_bits <= self.max_bits <= 16,
            "low_fraction": 0 <= self.low_fraction <= 1,
            "widths": bool(self.widths) and all(0 < w <= 1 for w in self.widths),
            "keep_saliency": 0 < self.keep_saliency <= 1,
            "budget_bits": 1 <= self.budget_bits <= 16,
            "penalty": self.penalty >= 0, "target_drop": self.target_drop >= 0,
            "hessian_samples": self.hessian_samples >= 1, "hessian_batch": self.hessian_batch >= 1,
            "n_clusters": self.n_clusters >= 2,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid CB-TPE settings: {', '.join(bad)} (need "
                             "1 <= min_bits <= low_bits <= max_bits <= 16, widths in (0, 1], "
                             "fractions in [0, 1], counts >= 1, n_clusters >= 2)")


# Per data set: how long a trial may take.  MNIST trains each trial on a subset.
DATA_DEFAULTS: dict[str, dict] = {
    "digits": {"trial_epochs": 3},
    "mnist": {"trial_train_size": 8192},
    "names": {"trial_train_size": 8192, "n_trials": 16},
    "tinyshakespeare": {"trial_train_size": 8192, "n_trials": 16},
}


# ----------------------------------------------------------------------------- the split


def cluster_split(values: list[float] | np.ndarray, n_clusters: int = 3, seed: int = 0,
                  maximize: bool = True) -> tuple[list[int], list[int], dict]:
    """Good and bad trial indices from 1-D k-means on objective values.

    Returns ``(good, bad, info)``: ``good`` are the values at or above the lowest value of
    the best cluster, ``bad`` those at or below the highest value of the worst cluster;
    with three or more clusters the values in between are in neither.  ``info`` holds
    the two thresholds.  With fewer distinct values than clusters, k shrinks; with one
    distinct value, the first trial is good and the rest bad.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or not v.size:
        raise ValueError("cluster_split needs a non-empty list of objective values")
    if not np.isfinite(v).all():
        raise ValueError("objective values must be finite")
    signed = v if maximize else -v
    k = min(n_clusters, len(np.unique(signed)))
    if k < 2:
        return [0], list(range(1, len(v))), {"k": k, "upper": None, "lower": None}
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(signed.reshape(-1, 1))
    ranked = np.argsort(km.cluster_centers_.ravel())
    upper = signed[km.labels_ == ranked[-1]].min()
    lower = signed[km.labels_ == ranked[0]].max()
    good = [int(i) for i in np.flatnonzero(signed >= upper)]
    bad = [int(i) for i in np.flatnonzero(signed <= lower)]
    sign = 1.0 if maximize else -1.0
    return good, bad, {"k": k, "upper": sign * float(upper), "lower": sign * float(lower)}


class ClusterTPESampler(TPESampler):
    """TPE whose good/bad split is :func:`cluster_split`, recomputed before every trial.

    Everything else (Parzen estimators, candidates, acquisition ``l(x)/g(x)``, startup
    trials) is Optuna's.  Single-objective, sequential studies only.
    """

    def __init__(self, *, n_clusters: int = 3, seed: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self.n_clusters = n_clusters
        self.kmeans_seed = seed or 0
        self.splits: list[dict] = []  # one entry per split, for the search log

    def _sample(self, study, trial, search_space):  # Optuna's private hook, optuna<6
        if study._is_multi_objective():
            raise ValueError("ClusterTPESampler supports single-objective studies only")
        trials = _distinct(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        good, bad, info = cluster_split(
            [t.value for t in trials], self.n_clusters, self.kmeans_seed,
            maximize=study.direction == optuna.study.StudyDirection.MAXIMIZE)
        self.splits.append({"trial": trial.number, "n": len(trials), "good": len(good),
                            "bad": len(bad), **info})
        below = self._build_parzen_estimator(study, search_space, [trials[i] for i in good],
                                             handle_below=True)
        above = self._build_parzen_estimator(study, search_space, [trials[i] for i in bad],
                                             handle_below=False)
        samples = below.sample(self._rng.rng, self._n_ei_candidates)
        best = self._compare(samples, self._compute_acquisition_func(samples, below, above))
        return {name: dist.to_external_repr(best[name]) for name, dist in search_space.items()}


def _distinct(trials: list) -> list:
    """Trials with distinct parameters (the first of each).

    TPE re-proposes configurations in a discrete space, and the objective is
    deterministic, so copies carry no information; counted once each they would let one
    configuration fill the good cluster and collapse l(x) onto it.
    """
    seen, out = set(), []
    for trial in trials:
        key = tuple(sorted(trial.params.items()))
        if key not in seen:
            seen.add(key)
            out.append(trial)
    return out


# ----------------------------------------------------------------------------- the space


@dataclass
class LayerSpace:
    """One quantised layer's sensitivity and its pruned choices."""

    name: str
    mean_trace: float
    bits: tuple[int, int]  # inclusive range
    widths: tuple[float, ...]  # (1.0,) where the width is not searched
    order: list[int]  # output channels, most salient first
    always_pruned: int = 0  # channels beyond the largest width candidate

    def dead(self, width: float) -> Tensor:
        """Bool mask of the channels a width multiplier removes (the least salient)."""
        keep = max(1, math.ceil(width * len(self.order) - 1e-9))
        mask = torch.ones(len(self.order), dtype=torch.bool)
        mask[self.order[:keep]] = False
        return mask


def build_space(ref: Reference, config: CBTPEConfig, seed: int) -> list[LayerSpace]:
    """Hutchinson sensitivities of the float model and the pruned search space."""
    model = ref.copy().eval()
    names = [n for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)]
    generator = torch.Generator().manual_seed(seed)
    x, y = ref.splits.train.tensors
    pick = torch.randperm(len(x), generator=generator)[: config.hessian_batch]
    batch = (x[pick].to(ref.device), y[pick].to(ref.device))
    weights = {n: model.get_submodule(n).weight for n in names}
    estimate = hutchinson(lambda: task_loss(model, *batch), weights, config.hessian_samples,
                          generator)
    producers = {link.producer for link in model.channel_graph().channels}
    traces = {n: estimate.mean_trace(n) for n in names}
    n_low = int(config.low_fraction * len(names))
    low = set(sorted(names, key=traces.get)[:n_low])
    space = []
    for name in names:
        top = config.low_bits if name in low else config.max_bits
        saliency = estimate.channel_saliency(name, weights[name]).cpu()
        order = torch.argsort(saliency, descending=True, stable=True).tolist()
        widths = _width_choices(saliency, config) if name in producers else (1.0,)
        pruned = len(order) - math.ceil(max(widths) * len(order) - 1e-9)
        space.append(LayerSpace(name, traces[name], (config.min_bits, top), widths, order,
                                pruned))
    return space


def _width_choices(saliency: Tensor, config: CBTPEConfig) -> tuple[float, ...]:
    """Candidates up to the smallest one whose top channels hold keep_saliency."""
    ranked = torch.sort(saliency, descending=True).values
    total = float(ranked.sum())
    if total <= 0:
        needed = 1.0  # no curvature information: prune nothing
    else:
        covered = torch.cumsum(ranked, 0) >= config.keep_saliency * total - 1e-12
        needed = (int(torch.nonzero(covered)[0]) + 1) / len(ranked)
    candidates = sorted(config.widths)
    bound = next((w for w in candidates if w >= needed - 1e-9), candidates[-1])
    return tuple(w for w in candidates if w <= bound)


def candidate(ref: Reference, space: list[LayerSpace], bits: dict[str, int],
              widths: dict[str, float]) -> FixedBits:
    """A copy of the float model at the given per-layer widths and bit widths."""
    dead = {layer.name: layer.dead(widths.get(layer.name, 1.0)) for layer in space}
    return FixedBits(ref.copy(), bits, dead=dead)


# ----------------------------------------------------------------------------- the search


@dataclass
class SearchResult:
    """What a search found and how fast."""

    sampler: str
    trials: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    wall_s: float = 0.0
    trials_to_target: int | None = None
    budget_bytes: int = 0
    target_score: float = 0.0
    splits: list[dict] = field(default_factory=list)

    @classmethod
    def from_log(cls, log: dict) -> SearchResult:
        """The search a run folder's ``search.json`` recorded."""
        trials = log["trials"]
        best = next(t for t in trials if t["trial"] == log["best_trial"])
        return cls(sampler=log["sampler"], trials=trials, best=best,
                   wall_s=log["search_wall_s"], trials_to_target=log["trials_to_target"],
                   budget_bytes=log["budget_bytes"], target_score=log["target_val_score"],
                   splits=log["splits"])


def objective(val_score: float, storage_bytes: float, budget_bytes: float,
              penalty: float) -> float:
    """The search's objective (point 4 of the module docstring): the validation score,
    less ``penalty`` per unit of relative excess over the storage budget."""
    if budget_bytes <= 0:
        raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
    return val_score - penalty * max(0.0, storage_bytes / budget_bytes - 1.0)


def _params_of(trial: optuna.Trial, space: list[LayerSpace]
               ) -> tuple[dict[str, int], dict[str, float]]:
    bits, widths = {}, {}
    for layer in space:
        bits[layer.name] = trial.suggest_int(f"bits/{layer.name}", *layer.bits)
        widths[layer.name] = (trial.suggest_categorical(f"width/{layer.name}", layer.widths)
                              if len(layer.widths) > 1 else layer.widths[0])
    return bits, widths


def search(ref: Reference, space: list[LayerSpace], config: CBTPEConfig,
           trial_config: TrainConfig, sampler: str, seed: int) -> SearchResult:
    """Run the Optuna study; ``sampler`` is ``"cluster-tpe"`` or ``"tpe"``."""
    train = ref.splits.train
    if config.trial_train_size is not None and config.trial_train_size < len(train):
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        train = TensorDataset(*(t[pick[: config.trial_train_size]] for t in train.tensors))
    float_score = score(evaluate(ref.model, ref.splits.val, ref.device))
    result = SearchResult(sampler=sampler, target_score=float_score - config.target_drop,
                          budget_bytes=FixedBits(ref.copy(), config.budget_bits)
                          .sc.storage_bytes())

    seen: dict[str, dict] = {}

    def score_trial(trial: optuna.Trial) -> float:
        bits, widths = _params_of(trial, space)
        key = json.dumps([bits, widths], sort_keys=True)
        if key in seen:  # a trial is deterministic: a repeat needs no training
            result.trials.append(seen[key] | {"trial": trial.number, "repeat": True,
                                              "wall_s": 0.0})
            return seen[key]["value"]
        fixed = candidate(ref, space, bits, widths)
        start = time.perf_counter()
        trainer = Trainer(fixed.model, train, ref.splits.val, trial_config,
                          compression=fixed.sc)
        with fixed.tracking():
            fitted = trainer.fit()
        val, nbytes = row_score(fitted.selected), fixed.sc.storage_bytes()
        value = objective(val, nbytes, result.budget_bytes, config.penalty)
        seen[key] = {"trial": trial.number, "value": value, "val_score": val,
                     "storage_bytes": nbytes, "bits": bits, "widths": widths,
                     "repeat": False, "wall_s": round(time.perf_counter() - start, 3)}
        result.trials.append(seen[key])
        return value

    kwargs = dict(seed=seed, n_startup_trials=config.n_startup_trials, multivariate=True)
    chosen = (ClusterTPESampler(n_clusters=config.n_clusters, **kwargs)
              if sampler == "cluster-tpe" else TPESampler(**kwargs))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=chosen)
    start = time.perf_counter()
    study.optimize(score_trial, n_trials=config.n_trials)
    result.wall_s = time.perf_counter() - start
    result.best = result.trials[study.best_trial.number]
    result.trials_to_target = next(
        (i + 1 for i, t in enumerate(result.trials)
         if t["val_score"] >= result.target_score and t["storage_bytes"] <= result.budget_bytes),
        None)
    result.splits = getattr(chosen, "splits", [])
    return result


# ----------------------------------------------------------------------------- the run


def run(method: str, data_name: str, *, seed: int = 0, out_dir: str | Path = "runs",
        device: str = "auto", progress: bool = True, float_overrides: dict | None = None,
        **overrides: Any) -> dict:
    """``cbtpe`` (cluster-based TPE) or ``cbtpe-tpe`` (standard TPE); the runs schema."""
    if method not in ("cbtpe", "cbtpe-tpe"):
        raise ValueError(f"{method!r} is not cbtpe or cbtpe-tpe")
    start = time.perf_counter()
    own, train = split_overrides(method, overrides, CBTPEConfig)
    refuse(method, train, ("gamma", "lambda_pres", "lr_quant"),
           "bit widths are searched, then frozen; there is no size term to weigh")
    config = CBTPEConfig(**(DATA_DEFAULTS.get(data_name, {}) | own))
    ref = reference(data_name, seed, out_dir, device, progress, float_overrides)
    final = train_config(method, data_name, seed=seed, device=device, progress=progress,
                              **(train | {"gamma": 0.0, "lr_quant": 0.0}))
    per_trial = dataclasses.replace(final, epochs=config.trial_epochs, progress=False)

    out = ref.run_folder(method, final, dataclasses.asdict(config))
    if (reopened := harness.finished(out, start)) is not None:
        return reopened
    space = build_space(ref, config, seed)
    sampler = "cluster-tpe" if method == "cbtpe" else "tpe"
    log = out / "search.json"
    if log.exists():  # a rerun or a resumed run: the search is deterministic, reuse it
        found = SearchResult.from_log(json.loads(log.read_text()))
    else:
        found = search(ref, space, config, per_trial, sampler, seed)
        atomic.write_json({**_summary(found), "space": [_layer_json(layer) for layer in space],
                           "trials": found.trials, "splits": found.splits}, log)

    fixed = candidate(ref, space, found.best["bits"], found.best["widths"])
    trainer = Trainer(fixed.model, ref.splits.train, ref.splits.val, final,
                      compression=fixed.sc, out_dir=out)
    with fixed.tracking():
        trained = trainer.fit()
    summary = _summary(found)
    result = {
        "params": {**dataclasses.asdict(final), "cbtpe": dataclasses.asdict(config),
                   "bits": found.best["bits"], "widths": found.best["widths"]},
        "search": summary, "selected_epoch": trained.selected_epoch,
        "train_s": round(found.wall_s + trained.wall_s, 2),  # search + final training
        "train_flops": trained.train_flops,  # the final training's (the trials' uncounted)
        "trained_by": trained.trained_by,  # the code that trained the final model
        "mean_bits": fixed.mean_bits(),
        "sensitivity": {layer.name: layer.mean_trace for layer in space},
        **packed_result(fixed.sc, out, ref),
    }
    return harness.finish(method, data_name, seed, result, start, out)


def _summary(found: SearchResult) -> dict:
    return {"sampler": found.sampler, "n_trials": len(found.trials),
            "distinct_trials": sum(not t["repeat"] for t in found.trials),
            "search_wall_s": round(found.wall_s, 2),
            "trials_to_target": found.trials_to_target,
            "budget_bytes": found.budget_bytes, "target_val_score": found.target_score,
            "best_trial": found.best["trial"], "best_value": found.best["value"],
            "best_trial_val_score": found.best["val_score"],
            "best_trial_storage_bytes": found.best["storage_bytes"]}


def _layer_json(layer: LayerSpace) -> dict:
    return {"name": layer.name, "mean_trace": layer.mean_trace, "bits": list(layer.bits),
            "widths": list(layer.widths), "always_pruned": layer.always_pruned}
