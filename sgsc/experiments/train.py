"""The training loop: float, self-compression (sc) and safety-guided self-compression (sgsc).

One loop serves all three.  The loss is

    task + l1_weights·mean|w| + l1_dead_bias·L1(dead biases) + gamma·Q
         + lambda_pres·task(preservation batch)

with the size term and the dead-bias term only when a :class:`SelfCompression` is
given, and the preservation term (and the feedback controller) only when a
:class:`~sgsc.core.safety.SafetyGuidance` is given -- the same object a user's own loop calls.
With feedback, the task loss trains on ``safety.task_dataset``: the training split
without the monitor's rows.  Epochs visit every training example once (shuffled without replacement,
seeded).  After each epoch the model is evaluated on the validation split, a metrics
row is appended to the history, the run is checkpointed (so a killed run resumes where
the last epoch ended), and the selected state is updated:

* float: the epoch with the best validation score;
* compression: the *smallest* epoch (by storage bytes) whose validation score is within
  ``select_tolerance`` of the best seen -- selection never looks at the test set.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from sgsc.core.compress import SelfCompression
from sgsc.core.feedback import FeedbackConfig
from sgsc.core.safety import BN_MODES, SafetyGuidance
from sgsc.core.tasks import evaluate, score, task_loss
from sgsc.experiments import provenance
from sgsc.fileformat import atomic
from sgsc.structure.prune import load_state_resizing

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (damaged, or of other settings); the
    message names it and what to do.  The file is left as it is."""


@dataclass
class TrainConfig:
    """Every knob of one training run; all of it is logged with the results."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3  # weights
    weight_decay: float = 0.0
    lr_quant: float = 0.05  # bit depths and exponents (SCNN used 0.5; so do the defaults)
    eps_quant: float = 1e-3
    schedule: str = "cosine"  # or "constant"
    init_bits: float = 8.0  # starting bit depth of every channel (above 24: starts at 24)
    gamma: float = 0.0  # weight of Q (bits per weight)
    l1_weights: float = 0.0  # weight of mean |w| over every weight matrix (the L1 term)
    l1_dead_bias: float = 1e-2
    lambda_pres: float = 0.0
    pres_batch_size: int = 64
    pres_augment: bool = False  # small random shifts of preservation images
    pres_bn: str = "eval"  # BatchNorm in the preservation forward (sgsc.core.safety.BN_MODES)
    select_tolerance: float = 0.005  # val accuracy (or nats) a smaller epoch may give up
    shrink_every: int = 0  # steps between physical removals of dead channels (0: at export)
    feedback: FeedbackConfig | None = None
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.feedback, dict):
            self.feedback = FeedbackConfig(**self.feedback)
        elif self.feedback is not None and not isinstance(self.feedback, FeedbackConfig):
            raise ValueError(f"feedback must be a FeedbackConfig, a dict of its fields or None, "
                             f"got {self.feedback!r}")
        problems = [f"{name}={getattr(self, name)!r} ({rule})" for name, (check, rule)
                    in _RULES.items() if not check(getattr(self, name))]
        if problems:
            raise ValueError("invalid training settings: " + "; ".join(problems))
        resolve_device(self.device)


def _integer(low: int) -> tuple:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low,
            f"an integer >= {low}")


def _number(low: float, *, strict: bool = False, high: float = math.inf) -> tuple:
    def check(v: object) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (v > low if strict else v >= low) and v <= high

    bound = f"> {low:g}" if strict else f">= {low:g}"
    return check, (f"a finite number {bound}" + (f" and <= {high:g}" if high < math.inf
                                                 else ""))


def _choice(*options: object) -> tuple:
    return (lambda v: v in options and type(v) is type(options[0]),
            "one of " + ", ".join(map(repr, options)))


# What every setting must be; TrainConfig names each one that is not, before any training.
_RULES = {
    "epochs": _integer(1), "batch_size": _integer(1), "lr": _number(0, strict=True),
    "weight_decay": _number(0), "lr_quant": _number(0), "eps_quant": _number(0, strict=True),
    "schedule": _choice("cosine", "constant"), "init_bits": _number(0, strict=True, high=32),
    "gamma": _number(0), "l1_weights": _number(0), "l1_dead_bias": _number(0),
    "lambda_pres": _number(0), "pres_batch_size": _integer(1),
    "pres_augment": _choice(False, True), "pres_bn": _choice(*BN_MODES),
    "select_tolerance": _number(0), "shrink_every": _integer(0), "seed": _integer(0),
    "device": _choice("auto", "cpu", "cuda"), "progress": _choice(True, False),
}


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; "
                         "use --device cpu or auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------- state


@dataclass
class TrainResult:
    """What a run produced: the selected model state, its metrics, and the history."""

    history: list[dict] = field(default_factory=list)
    selected_epoch: int = 0
    selected: dict = field(default_factory=dict)  # metrics of the selected epoch
    feedback_events: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    trained_by: list[dict] = field(default_factory=list)  # code and CPU that trained


class Trainer:
    """Trains ``model`` (optionally wrapped by ``compression``) on ``train``; see module doc.

    ``safety`` (a :class:`~sgsc.core.safety.SafetyGuidance` of ``compression``) adds the
    preservation loss (weighted by ``config.lambda_pres``) and runs its monitor and
    feedback after every step; ``config.feedback`` must then be its feedback settings.
    """

    def __init__(self, model: nn.Module, train: TensorDataset, val: TensorDataset,
                 config: TrainConfig, *, compression: SelfCompression | None = None,
                 safety: SafetyGuidance | None = None,
                 out_dir: str | os.PathLike[str] | None = None) -> None:
        _check_safety(config, compression, safety)
        self.config = config
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.compression = compression
        # Compressed models keep the smallest good epoch, float models the best one.
        self.select_smallest = compression is not None
        self.safety = safety
        self.train_set = safety.task_dataset if safety is not None else train
        self.val_set = val
        self.out_dir = Path(out_dir) if out_dir is not None else None
        seed_everything(config.seed)
        self.loader_generator = torch.Generator().manual_seed(config.seed)
        self.steps_per_epoch = math.ceil(len(self.train_set) / config.batch_size)
        self.optimizer, self.scheduler = self._make_optimizer()
        self.step = 0
        self.epoch = 0
        self.history: list[dict] = []
        self.best_score = -math.inf
        self.selected_epoch = 0
        self.selected_state: dict | None = None
        self.shrinks: list[dict] = []  # one row per removal of dead channels
        self.trained_by: list[dict] = []  # provenance.training_state of each that trained
        self.wall_s = 0.0

    # ------------------------------------------------------------------ pieces

    def _make_optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        """AdamW on the model's current parameters, and the learning-rate schedule."""
        config = self.config
        groups = (self.compression.param_groups(lr_quant=config.lr_quant,
                                                eps_quant=config.eps_quant, lr_weights=config.lr,
                                                weight_decay=config.weight_decay)
                  if self.compression is not None else
                  [{"params": list(self.model.parameters()), "lr": config.lr,
                    "weight_decay": config.weight_decay}])
        optimizer = torch.optim.AdamW(groups)
        total = self.steps_per_epoch * config.epochs
        if config.schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
        else:
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        return optimizer, scheduler

    def loss_terms(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every term of the loss for one batch, before weighting (for logging)."""
        cfg = self.config
        terms = {"task": task_loss(self.model, x, y)}
        if cfg.l1_weights:
            terms["l1"] = weights_l1(self.model)
        if self.compression is not None:
            terms["size"] = self.compression.size_loss()
            if cfg.l1_dead_bias:
                terms["dead_bias"] = self.compression.dead_bias_l1()
        if self.safety is not None and cfg.lambda_pres:
            terms["preservation"] = self.safety.preservation_loss()
        return terms

    def total_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.config
        weights = {"task": 1.0, "l1": cfg.l1_weights, "size": cfg.gamma,
                   "dead_bias": cfg.l1_dead_bias, "preservation": cfg.lambda_pres}
        return sum(weights[k] * v for k, v in terms.items())

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled batches sliced from the in-memory tensors.

        The very batches ``DataLoader(train_set, shuffle=True, generator=g)`` gives -- it
        draws a worker seed, then a permutation, and one more permutation when the epoch
        ends, all from ``g`` -- without its per-example indexing and collating.
        """
        generator = self.loader_generator
        torch.empty((), dtype=torch.int64).random_(generator=generator)  # DataLoader's seed
        n = len(self.train_set)
        order = torch.randperm(n, generator=generator)
        x_all, y_all = self.train_set.tensors[:2]
        for start in range(0, n, self.config.batch_size):
            rows = order[start:start + self.config.batch_size]
            yield x_all[rows].to(self.device), y_all[rows].to(self.device)
        torch.randperm(n, generator=generator)  # RandomSampler's draw at the epoch's end

    # ------------------------------------------------------------------ epochs

    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        sums: dict[str, float] = {}
        bar = tqdm(self._batches(), total=self.steps_per_epoch, leave=False,
                   desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
                   disable=not self.config.progress)
        for x, y in bar:
            terms = self.loss_terms(x, y)
            loss = self.total_loss(terms)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            if self.safety is not None:
                self.safety.step(self.optimizer)
            self._maybe_shrink(x)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        return {f"train_{k}": v / self.steps_per_epoch for k, v in sums.items()}

    def _maybe_shrink(self, x: torch.Tensor) -> None:
        """Every ``shrink_every`` steps, remove the zero-bit channels nothing can revive.

        A bit depth at or below 0 gets no gradient (the quantizer clamps it through a
        ReLU), so only the feedback controller could bring a channel back, and it revives
        only channels of its last healthy snapshot (``SafetyGuidance.removable``).  Every
        other zero-bit channel is cut from the live model -- optimizer state and the
        controller's snapshot with it -- and each later step costs what the smaller
        network costs.  The cut is exact in eval mode (``sgsc.structure.prune``); in train mode
        BatchNorm would have normalised the dead channels' constants differently, so the
        numbers move slightly against a run that removes them only at export.
        """
        every = self.config.shrink_every
        if not every or self.compression is None or self.step % every:
            return
        removable = (self.safety.removable() if self.safety is not None else
                     {n: b.detach() <= 0 for n, b in self.compression.bit_depths().items()})
        if not any(mask.any() for mask in removable.values()):
            return
        was_training = self.model.training
        result = self.compression.prune(x[:1], self.optimizer, dead_rows=removable)
        self.model.train(was_training)
        if result.params_after == result.params_before:
            return
        if self.safety is not None:
            self.safety.pruned(result)
        self.shrinks.append({"step": self.step, "params_before": result.params_before,
                             "params_after": result.params_after,
                             "flops_before": result.flops_before,
                             "flops_after": result.flops_after})

    def epoch_metrics(self, train_metrics: dict[str, float]) -> dict:
        val = evaluate(self.model, self.val_set, self.device)
        row = {"epoch": self.epoch, "step": self.step, **train_metrics,
               **{f"val_{k}": v for k, v in val.items()}}
        if self.safety is not None:
            pres = evaluate(self.model, self.safety.loss_set, self.device)
            row.update({f"pres_{k}": v for k, v in pres.items()})
            if self.safety.monitor_set is not None:
                monitor = evaluate(self.model, self.safety.monitor_set, self.device)
                row.update({f"monitor_{k}": v for k, v in monitor.items()})
        if self.compression is not None:
            report = self.compression.size_report()
            row.update({"Q": float(report["Q"]), "storage_bytes": int(report["storage_bytes"]),
                        "live_weights": int(report["live_weights"])})
        else:
            row.update({"storage_bytes": float_storage_bytes(self.model),
                        "live_weights": count_weights(self.model)})
        if self.safety is not None and self.safety.controller is not None:
            row["feedback_events"] = len(self.safety.events)
            row["feedback_bits"] = self.safety.controller.bits_spent
        return row

    def _select(self, row: dict) -> None:
        """Online selection on validation only (see the module docstring)."""
        score_now = row_score(row)
        self.best_score = max(self.best_score, score_now)
        if self.selected_state is None:
            take = True
        elif not self.select_smallest:
            take = score_now > row_score(self.history[self.selected_epoch - 1])
        else:
            floor = self.best_score - self.config.select_tolerance
            current = self.history[self.selected_epoch - 1]
            take = score_now >= floor and (row["storage_bytes"] <= current["storage_bytes"]
                                           or row_score(current) < floor)
        if take:
            self.selected_epoch = row["epoch"]
            self.selected_state = copy.deepcopy(self.model.state_dict())

    def fit(self) -> TrainResult:
        """Train for the configured epochs, resuming from a checkpoint in ``out_dir``."""
        self._resume()
        if self.safety is not None and self.step == 0:
            self.safety.start(self.optimizer)  # the first healthy snapshot
        start = time.perf_counter() - self.wall_s
        epochs = range(self.epoch, self.config.epochs)
        if len(epochs) and provenance.training_state() not in self.trained_by:
            self.trained_by.append(provenance.training_state())  # this code trains epochs now
        for _ in tqdm(epochs, desc="epochs", disable=not self.config.progress,
                      initial=self.epoch, total=self.config.epochs):
            train_metrics = self.train_epoch()
            self.epoch += 1
            row = self.epoch_metrics(train_metrics)
            self.wall_s = time.perf_counter() - start
            row["wall_s"] = self.wall_s
            self.history.append(row)
            self._select(row)
            self._checkpoint()
        if self.selected_state is not None:  # it may predate a shrink: other shapes
            load_state_resizing(self.model, self.selected_state)
        events = [asdict(e) for e in self.safety.events] if self.safety else []
        result = TrainResult(
            history=self.history, selected_epoch=self.selected_epoch,
            selected=self.history[self.selected_epoch - 1] if self.history else {},
            feedback_events=events, wall_s=self.wall_s, trained_by=list(self.trained_by))
        if self.out_dir is not None:
            safety = {}
            if self.safety is not None and self.safety.controller is not None:
                safety = {"feedback": events, "feedback_checks": self.safety.checks,
                          "monitor_float_loss": self.safety.float_monitor_loss,
                          "monitor_reference_loss": self.safety.float_level,
                          "monitor_indices": self.safety.monitor_indices.tolist()}
            atomic.write_json({"config": _config_dict(self.config), "history": self.history,
                                    "selected_epoch": self.selected_epoch,
                               "shrinks": self.shrinks, "trained_by": self.trained_by,
                               **safety},
                              self.out_dir / HISTORY)
        return result

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint(self) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "config": _config_dict(self.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch, "step": self.step, "wall_s": self.wall_s,
            "history": json.dumps(self.history),
            "best_score": self.best_score, "selected_epoch": self.selected_epoch,
            "selected_state": self.selected_state, "shrinks": json.dumps(self.shrinks),
            "trained_by": json.dumps(self.trained_by),
            "rng": {"torch": torch.get_rng_state(), "loader": self.loader_generator.get_state()},
            "safety": self.safety.state_dict() if self.safety else None,
        }
        atomic.torch_save(state, self.out_dir / CHECKPOINT)

    def _resume(self) -> None:
        path = self.out_dir / CHECKPOINT if self.out_dir is not None else None
        if path is None or not path.exists():
            return
        advice = "delete it to start this run again from scratch"
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as err:  # a damaged checkpoint must not be silently ignored
            raise CheckpointError(f"checkpoint {path} cannot be read: it is damaged or not an "
                                  f"sgsc checkpoint ({type(err).__name__}); {advice}") from err
        if not isinstance(state, dict) or "config" not in state:
            raise CheckpointError(f"{path} is not an sgsc checkpoint; {advice}")
        if state["config"] != _config_dict(self.config):
            raise ValueError(f"checkpoint {path} was written with other settings; use another "
                             "--out directory or delete it to start again")
        try:
            self._load_checkpoint(state)
        except (KeyError, TypeError, ValueError, RuntimeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"checkpoint {path} is incomplete or does not fit this run "
                                  f"({type(err).__name__}: {err}); {advice}") from err

    def _load_checkpoint(self, state: dict) -> None:
        if load_state_resizing(self.model, state["model"]):  # shrunk since: new parameters
            self.optimizer, self.scheduler = self._make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step, self.wall_s = state["epoch"], state["step"], state["wall_s"]
        self.history = json.loads(state["history"])
        self.best_score, self.selected_epoch = state["best_score"], state["selected_epoch"]
        self.selected_state = state["selected_state"]
        self.shrinks = json.loads(state.get("shrinks", "[]"))
        # a checkpoint of code that did not record itself: say so rather than guess
        self.trained_by = json.loads(state.get("trained_by", json.dumps(
            [{"version": None, "git_sha": "not recorded (checkpoint of earlier code)",
              "sgsc_dirty": None}])))
        torch.set_rng_state(state["rng"]["torch"])
        self.loader_generator.set_state(state["rng"]["loader"])
        if self.safety is not None and state["safety"] is not None:
            self.safety.load_state_dict(state["safety"])


def row_score(row: dict) -> float:
    """Validation score of a history row: accuracy, or minus the loss (nats) for text."""
    return score({k[4:]: v for k, v in row.items() if k.startswith("val_")})


def _config_dict(config: TrainConfig) -> dict:
    """The settings that define a run (progress bars and device do not change results)."""
    values = asdict(config)
    values.pop("progress")
    values.pop("device")
    return values


def _check_safety(config: TrainConfig, compression: SelfCompression | None,
                  safety: SafetyGuidance | None) -> None:
    """The safety settings of ``config`` and the ``safety`` object must agree."""
    if safety is None:
        if config.lambda_pres or config.feedback is not None:
            raise ValueError("lambda_pres > 0 or feedback needs a SafetyGuidance "
                             "(Trainer(..., safety=SafetyGuidance(...)))")
        return
    if compression is None or safety.compression is not compression:
        raise ValueError("safety must guard the Trainer's own SelfCompression")
    has_feedback = safety.controller is not None
    if has_feedback != (config.feedback is not None) or (
            has_feedback and safety.controller.config != config.feedback):
        raise ValueError("config.feedback and the SafetyGuidance's feedback settings differ; "
                         "build both from the same FeedbackConfig")
    ours = (config.pres_batch_size, config.pres_augment, config.pres_bn)
    theirs = (safety.batch_size, safety.augment, safety.bn)
    if ours != theirs:
        raise ValueError(f"config's (pres_batch_size, pres_augment, pres_bn) = {ours} but the "
                         f"SafetyGuidance has {theirs}; build it from the same settings")


def weights_l1(model: nn.Module) -> torch.Tensor:
    """The L1 term: mean ``|w|`` over every weight matrix and kernel (2+ dims), so that a
    coefficient means the same on a small and on a large model."""
    weights = [p for p in model.parameters() if p.dim() >= 2]
    return sum(p.abs().sum() for p in weights) / sum(p.numel() for p in weights)


def count_weights(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def float_storage_bytes(model: nn.Module) -> int:
    """A float model stores every parameter and buffer at its dtype."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
