"""The training loop: float, self-compression (sc) and safety-guided self-compression (sgsc).

One loop serves all three; its loss is :class:`~sgsc.core.loss.CompressionLoss` (task + L1
+ dead bias + gamma·Q + lambda_pres·preservation), the same object a user's own loop
calls, with the size and dead-bias terms only when a :class:`SelfCompression` is given and
the preservation term (and the feedback controller) only when a
:class:`~sgsc.core.safety.SafetyGuidance` is given.  With feedback, the task loss trains
on ``safety.task_dataset``: the training split without the monitor's rows.  Epochs visit
every training example once (shuffled without replacement, seeded).  After every
``eval_every``-th epoch (every epoch by default) and after the last, the model is evaluated
on the validation split and the run's record
(:class:`~sgsc.experiments.checkpoint.RunRecord`) gains a metrics row and updates its
selection on validation -- never the test set --; after every epoch the run is checkpointed
(:class:`~sgsc.experiments.checkpoint.RunFolder`), so a killed run resumes where the last
epoch ended.  Every ``shrink_every`` steps the zero-bit channels nothing can revive are
removed from the live model.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from sgsc.core.compress import SelfCompression
from sgsc.core.feedback import FeedbackConfig
from sgsc.core.loss import CompressionLoss
from sgsc.core.safety import BN_MODES, SafetyGuidance
from sgsc.core.tasks import evaluate
from sgsc.experiments import provenance
from sgsc.experiments.checkpoint import (  # noqa: F401  (the names users know from here)
    CHECKPOINT,
    HISTORY,
    CheckpointError,
    RunFolder,
    RunRecord,
    row_score,
)
from sgsc.structure.prune import count_flops, load_state_resizing


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
    gamma: float = 0.0  # weight of the size term (bits per weight)
    size_term: str = "bits"  # Q at ceil(b) bits ("bits"), or the entropy estimate ("rate")
    l1_weights: float = 0.0  # weight of mean |w| over every weight matrix (the L1 term)
    l1_dead_bias: float = 1e-2
    lambda_pres: float = 0.0
    pres_batch_size: int = 64
    pres_augment: bool = False  # small random shifts of preservation images
    pres_bn: str = "eval"  # BatchNorm in the preservation forward (sgsc.core.safety.BN_MODES)
    select_tolerance: float = 0.005  # val accuracy (or nats) a smaller epoch may give up
    eval_every: int = 1  # epochs between validations (the last is always validated)
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
    "size_term": _choice("bits", "rate"),
    "pres_augment": _choice(False, True), "pres_bn": _choice(*BN_MODES),
    "select_tolerance": _number(0), "eval_every": _integer(1), "shrink_every": _integer(0),
    "seed": _integer(0),
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
    """Seed Python's, NumPy's and torch's global generators alike."""
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
    feedback_attempts: list[dict] = field(default_factory=list)  # kept or rolled back
    wall_s: float = 0.0
    trained_by: list[dict] = field(default_factory=list)  # code and CPU that trained
    train_flops: float = 0.0  # see Trainer: the run's training FLOPs, following its shape


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
        rate = compression is not None and config.size_term == "rate"
        self.loss = CompressionLoss(compression if compression is not None else self.model,
                                    safety, gamma=config.gamma if compression else 0.0,
                                    l1_weights=config.l1_weights,
                                    l1_dead_bias=config.l1_dead_bias,
                                    lambda_pres=config.lambda_pres,
                                    size=compression.rate_loss if rate else None)
        self.train_set = safety.task_dataset if safety is not None else train
        self.val_set = val
        self.folder = RunFolder(out_dir)
        seed_everything(config.seed)
        self.loader_generator = torch.Generator().manual_seed(config.seed)
        self.steps_per_epoch = math.ceil(len(self.train_set) / config.batch_size)
        self.optimizer, self.scheduler = self._make_optimizer()
        self.step = 0
        self.epoch = 0
        self.wall_s = 0.0
        self.record = RunRecord()
        self._macs_per_example: int | None = None  # of the network as it is now
        # examples a step forwards and backwards: the task batch, and the preservation
        # batch when that term is on
        self._extra_examples = safety.batch_size if safety is not None and \
            config.lambda_pres else 0

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
        """One pass over the training split; returns the mean of each loss term."""
        self.model.train()
        sums: dict[str, float] = {}
        bar = tqdm(self._batches(), total=self.steps_per_epoch, leave=False,
                   desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
                   disable=not self.config.progress)
        for x, y in bar:
            terms = self.loss.terms(x, y)
            loss = self.loss.total(terms)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            self._count_flops(x)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            if self.safety is not None:
                self.safety.step(self.optimizer)
            self._maybe_shrink(x)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        return {f"train_{k}": v / self.steps_per_epoch for k, v in sums.items()}

    def _count_flops(self, x: torch.Tensor) -> None:
        """Training FLOPs of this step: 2 per multiply-accumulate, forward and backward
        (3x the forward), over the examples it saw, at the network's current size (Conv
        and Linear layers: :func:`sgsc.structure.prune.count_flops`)."""
        if self._macs_per_example is None:
            self._macs_per_example = count_flops(self.model, x[:1])
        self.record.train_flops += 6.0 * self._macs_per_example * (len(x)
                                                                   + self._extra_examples)

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
        self._macs_per_example = result.flops_after  # measured on one example: per example
        self.record.shrinks.append({"step": self.step, "params_before": result.params_before,
                             "params_after": result.params_after,
                             "flops_before": result.flops_before,
                             "flops_after": result.flops_after})

    def epoch_metrics(self, train_metrics: dict[str, float]) -> dict:
        """The history row of an epoch: ``train_metrics``, validation (and preservation
        and monitor) metrics, and the model's size."""
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
        if self.safety is not None and self.safety.feedback is not None:
            row["feedback_events"] = len(self.safety.events)
            row["feedback_bits"] = self.safety.bits_spent
        return row

    def fit(self) -> TrainResult:
        """Train for the configured epochs, resuming from a checkpoint in ``out_dir``."""
        self._resume()
        if self.safety is not None and self.step == 0:
            self.safety.start(self.optimizer)  # the first healthy snapshot
        start = time.perf_counter() - self.wall_s
        epochs = range(self.epoch, self.config.epochs)
        record = self.record
        if len(epochs) and provenance.training_state() not in record.trained_by:
            record.trained_by.append(provenance.training_state())  # this code trains now
        for _ in tqdm(epochs, desc="epochs", disable=not self.config.progress,
                      initial=self.epoch, total=self.config.epochs):
            train_metrics = self.train_epoch()
            self.epoch += 1
            # Validation is the only step that trains nothing: where an epoch is short
            # (1,000 images, 5,000 to validate on) it would cost more than the training,
            # so small data sets validate every few epochs; selection picks among those.
            if self.epoch % self.config.eval_every == 0 or self.epoch == self.config.epochs:
                row = self.epoch_metrics(train_metrics)
                row["wall_s"] = self.wall_s = time.perf_counter() - start
                record.add(row, self.model.state_dict, smallest=self.select_smallest,
                           tolerance=self.config.select_tolerance)
            self.wall_s = time.perf_counter() - start
            self.folder.save(self._checkpoint_state())
        if record.selected_state is not None:  # it may predate a shrink: other shapes
            load_state_resizing(self.model, record.selected_state)
        events = [asdict(e) for e in self.safety.events] if self.safety else []
        self.folder.write_history(_config_dict(self.config), record,
                                  **(self.safety.monitor_record() if self.safety else {}))
        attempts = list(self.safety.attempts) if self.safety is not None else []
        return TrainResult(history=record.history, selected_epoch=record.selected_epoch,
                           selected=record.selected, feedback_events=events,
                           feedback_attempts=attempts,
                           wall_s=self.wall_s, trained_by=list(record.trained_by),
                           train_flops=record.train_flops)

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint_state(self) -> dict:
        return {
            "config": _config_dict(self.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch, "step": self.step, "wall_s": self.wall_s,
            **self.record.checkpoint_state(),
            "rng": {"torch": torch.get_rng_state(), "loader": self.loader_generator.get_state()},
            "safety": self.safety.state_dict() if self.safety else None,
        }

    def _resume(self) -> None:
        state = self.folder.load(_config_dict(self.config), self.device)
        if state is None:
            return
        try:
            if load_state_resizing(self.model, state["model"]):  # shrunk since: new params
                self.optimizer, self.scheduler = self._make_optimizer()
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.epoch, self.step, self.wall_s = state["epoch"], state["step"], state["wall_s"]
            self.record = RunRecord.from_checkpoint(state)
            torch.set_rng_state(state["rng"]["torch"])
            self.loader_generator.set_state(state["rng"]["loader"])
            if self.safety is not None and state["safety"] is not None:
                self.safety.load_state_dict(state["safety"])
        except (KeyError, TypeError, ValueError, RuntimeError, json.JSONDecodeError) as err:
            raise self.folder.damaged(err) from err


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
    if safety.feedback != config.feedback:
        raise ValueError("config.feedback and the SafetyGuidance's feedback settings differ; "
                         "build both from the same FeedbackConfig")
    ours = (config.pres_batch_size, config.pres_augment, config.pres_bn)
    theirs = (safety.batch_size, safety.augment, safety.bn)
    if ours != theirs:
        raise ValueError(f"config's (pres_batch_size, pres_augment, pres_bn) = {ours} but the "
                         f"SafetyGuidance has {theirs}; build it from the same settings")


def count_weights(model: nn.Module) -> int:
    """Parameters of ``model``, every tensor counted in full."""
    return sum(p.numel() for p in model.parameters())


def float_storage_bytes(model: nn.Module) -> int:
    """A float model stores every parameter and buffer at its dtype."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
