"""Feedback controller: watch a held-out monitor and restore precision where it helps.

Every ``every`` steps the controller reads the *monitor loss* -- the task loss, in eval
mode, on critical examples that no loss term ever trains on (see :mod:`sgsc.core.safety`) --
and compares it with the float reference's level on the same examples (measured after
the float model, too, has trained ``calibration_steps`` without them).  While the
compressed model stays within ``threshold`` nats of that level, its bit depths and
exponents are snapshotted as *healthy*.  Above it, the controller restores precision:

* ``policy="refine"`` (default): a live channel gets ``k = restore_bits`` more bits *and*
  an exponent lowered by ``k``.  The clamp range ``2^(e+b-1)`` stays where it was and the
  step ``2^e`` halves per bit, so the channel really is quantized more finely (raising
  ``b`` alone would only widen the range, leaving unclipped weights unchanged).  A
  channel that died since the last healthy snapshot comes back at ``k`` bits over its
  snapshot's range -- not at its old depth.
* ``policy="rollback"``: a channel returns to its last healthy ``(b, e)``.

Channels are chosen by the signed first-order change of the monitor loss,
``<dL/dq_c, q_c(new) - q_c(now)>`` with ``q_c`` the channel's quantized weights (one
backward pass prices every candidate exactly as a weight change), cheapest decrease per
stored bit first, within the bits one event may add (``event_budget``) and the bits a
whole run may add (``run_budget``), both in bits per weight of the original model (the
unit of ``Q``).  The chosen change is then *measured*: when the monitor loss did not
fall, the lower-ranked half is dropped and the rest measured again (``backtracks``
times) before the controller gives up and restores nothing.  So no event raises the
monitor loss, and each logs the loss and accuracy just before and after it.

Adam's moments of every changed ``b`` and ``e`` entry are zeroed, so that stale momentum
does not push the restored bits straight back down.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor
from torch.nn.utils import parametrize

from sgsc.core.compress import SelfCompression
from sgsc.core.quant import MAX_BITS, effective_bits, quantize
from sgsc.structure.prune import PruneResult

POLICIES = ("refine", "rollback")


@dataclass
class FeedbackConfig:
    """How often to look, what counts as damage, and how much precision may come back."""

    every: int = 50  # optimizer steps between monitor checks
    threshold: float = 0.05  # nats of monitor loss above the float level that trigger
    policy: str = "refine"  # or "rollback" (see the module docstring)
    restore_bits: int = 1  # refine: bits added to a channel (its exponent falls as much)
    event_budget: float = 0.02  # bits per original weight (Q units) one event may add
    run_budget: float = 0.1  # bits per original weight all events of a run may add
    backtracks: int = 3  # halvings of a restore that did not lower the monitor loss
    monitor_fraction: float = 0.3  # share of the preservation set held out as the monitor
    calibration_steps: int = 200  # float fine-tune without the monitor that sets its level

    def __post_init__(self) -> None:
        problems = []
        if not _is_int(self.every) or self.every < 1:
            problems.append(f"every must be a positive step count, got {self.every!r}")
        if not _finite(self.threshold) or self.threshold < 0:
            problems.append(f"threshold is a loss margin in nats >= 0, got {self.threshold!r}")
        if self.policy not in POLICIES:
            problems.append(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if not _is_int(self.restore_bits) or not 1 <= self.restore_bits <= MAX_BITS:
            problems.append(f"restore_bits must be an integer in [1, {MAX_BITS}], "
                            f"got {self.restore_bits!r}")
        for name in ("event_budget", "run_budget"):
            value = getattr(self, name)
            if not _finite(value) or value < 0:
                problems.append(f"{name} is a restore budget in bits per weight and must be "
                                f">= 0, got {value!r}")
        if not _is_int(self.backtracks) or self.backtracks < 0:
            problems.append(f"backtracks must be an integer >= 0, got {self.backtracks!r}")
        if not _is_int(self.calibration_steps) or self.calibration_steps < 0:
            problems.append("calibration_steps must be an integer >= 0, got "
                            f"{self.calibration_steps!r}")
        if not _finite(self.monitor_fraction) or not 0 < self.monitor_fraction < 1:
            problems.append("monitor_fraction is the share of the preservation set held out "
                            f"as the monitor and must be in (0, 1), got {self.monitor_fraction!r}")
        if problems:
            raise ValueError("invalid feedback settings: " + "; ".join(problems))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


@dataclass
class FeedbackEvent:
    """One restore: when, why, what it changed, and what that did to the monitor."""

    step: int
    policy: str
    trigger_level: float  # the float level of the monitor loss + threshold
    monitor_loss_before: float
    monitor_loss_after: float
    monitor_accuracy_before: float | None
    monitor_accuracy_after: float | None
    predicted_change: float  # first-order estimate of the monitor-loss change
    channels: int  # channels whose (b, e) changed
    channels_by_layer: dict[str, int]
    bits_added: int  # change of the exported file's size, in bits
    attempts: int  # measurements needed (1 + backtracks used)


@dataclass
class Reading:
    """The monitor's loss and accuracy (None for a language model) at one moment."""

    loss: float
    accuracy: float | None = None


@dataclass
class _Move:
    """A candidate change of one channel: new (b, e), its predicted effect and cost."""

    layer: str
    index: int
    bits: float
    exponent: float
    predicted: float
    cost: int  # bits it adds to the file (see FeedbackController._exact_costs)


@dataclass
class FeedbackController:
    """The monitor and restore loop of one :class:`SelfCompression`.

    Args:
        compression: the wrapped model whose bit depths and exponents are restored.
        monitor: returns the monitor :class:`Reading` now (eval mode, no gradients).
        monitor_loss: returns the monitor loss with gradients (eval mode), used to price
            candidate restores.
        float_level: the float reference's monitor loss (calibrated, see
            :mod:`sgsc.core.safety`); the trigger is this plus ``config.threshold``.
        config: see :class:`FeedbackConfig`.
        validation: returns the validation loss now (eval mode), logged before and after
            every attempted restore and never used to decide one; None logs none.
    """

    compression: SelfCompression
    monitor: Callable[[], Reading]
    monitor_loss: Callable[[], Tensor]
    float_level: float
    config: FeedbackConfig = field(default_factory=FeedbackConfig)
    events: list[FeedbackEvent] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    # every measured restore, kept or rolled back, with the monitor's loss and -- when a
    # ``validation`` reading is given -- the validation loss before and after it: what the
    # feedback did, not only what it kept
    attempts: list[dict] = field(default_factory=list)
    validation: Callable[[], float] | None = None
    bits_spent: int = 0
    _snapshot: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.compression.names:
            raise ValueError("feedback needs a model with quantized layers: the "
                             "SelfCompression wraps no Conv/Linear layer, so there is no "
                             "precision to restore (set feedback=None)")
        if not math.isfinite(self.float_level):
            raise ValueError(f"the float model's monitor loss is {self.float_level}; "
                             "check the float reference and the monitor examples")

    @property
    def trigger_level(self) -> float:
        """Monitor loss above which precision is restored."""
        return self.float_level + self.config.threshold

    def budget_bits(self, budget: float) -> int:
        """A budget in bits per original weight, as bits of the file."""
        return int(budget * self.compression.total_weights)

    def maybe_check(self, step: int, optimizer: torch.optim.Optimizer | None = None
                    ) -> FeedbackEvent | None:
        """Check when ``step`` is a multiple of ``config.every``; restore if needed."""
        if step % self.config.every:
            return None
        return self.check(step, optimizer)

    def check(self, step: int, optimizer: torch.optim.Optimizer | None = None
              ) -> FeedbackEvent | None:
        """Read the monitor now and restore precision when it is above the trigger."""
        reading = self.monitor()
        row = {"step": step, "monitor_loss": reading.loss,
               "monitor_accuracy": reading.accuracy, "trigger_level": self.trigger_level}
        self.checks.append(row)
        if reading.loss <= self.trigger_level:
            self._snapshot = self._bit_state()
            row["action"] = "healthy"
            return None
        if not self._snapshot:  # damaged before any healthy check: the present is all we have
            self._snapshot = self._bit_state()
        allowance = min(self.budget_bits(self.config.event_budget),
                        self.budget_bits(self.config.run_budget) - self.bits_spent)
        if allowance <= 0:
            row["action"] = "budget spent"
            return None
        event = self._restore(step, reading, allowance, optimizer)
        row["action"] = "restored" if event else "no restore lowered the monitor loss"
        if event is not None:
            self.events.append(event)
            self.bits_spent += max(event.bits_added, 0)
        return event

    # ------------------------------------------------------------------ restoring

    def _bit_state(self) -> dict[str, Tensor]:
        state = {}
        for name, quantizer in self.compression.quantizers.items():
            state[f"{name}.b"] = quantizer.bit_depth.detach().clone()
            state[f"{name}.e"] = quantizer.exponent.detach().clone()
        return state

    def _targets(self, name: str) -> tuple[Tensor, Tensor, Tensor]:
        """(new b, new e, which channels have a candidate move) for layer ``name``."""
        quantizer = self.compression.quantizers[name]
        b, e = quantizer.bit_depth.detach(), quantizer.exponent.detach()
        saved_b, saved_e = self._snapshot[f"{name}.b"], self._snapshot[f"{name}.e"]
        if self.config.policy == "rollback":
            return saved_b.clone(), saved_e.clone(), (saved_b != b) | (saved_e != e)
        k = self.config.restore_bits
        live = b > 0
        # Revival at k bits over the snapshot's range: e + b stays what it was.
        revived = ~live & (saved_b > 0)
        snap_bits = effective_bits(saved_b)
        new_b = torch.where(live, b + k, torch.full_like(b, float(k)))
        new_e = torch.where(live, e - k, saved_e + snap_bits - k)
        movable = (live & (b + k <= MAX_BITS)) | revived
        return new_b, new_e, movable

    def _candidates(self) -> list[_Move]:
        """Every candidate move, priced by the first-order change of the monitor loss."""
        model = self.compression.model
        names = self.compression.names
        was_training = model.training
        model.eval()
        with torch.enable_grad(), parametrize.cached():
            weights = [self.compression.model.get_submodule(n).weight for n in names]
            grads = torch.autograd.grad(self.monitor_loss(), weights, allow_unused=True)
        model.train(was_training)
        moves = []
        with torch.no_grad():
            for name, weight, grad in zip(names, weights, grads, strict=True):
                if grad is None:
                    continue
                new_b, new_e, movable = self._targets(name)
                raw = self.compression.raw_weights()[name]
                change = quantize(raw, new_b, new_e) - weight.detach()
                predicted = (grad * change).flatten(1).sum(1)
                for i in movable.nonzero().flatten().tolist():
                    moves.append(_Move(name, i, float(new_b[i]), float(new_e[i]),
                                       float(predicted[i]), 0))
        return moves

    @torch.no_grad()
    def _exact_costs(self, moves: list[_Move]) -> None:
        """Set each move's cost to what it adds to the file on its own (a revived producer
        channel also stores its consumers' inputs again, which the row count misses)."""
        base = self.compression.storage_bits()
        quantizers = self.compression.quantizers
        for m in moves:
            q = quantizers[m.layer]
            b, e = float(q.bit_depth[m.index]), float(q.exponent[m.index])
            self._apply([m])
            m.cost = self.compression.storage_bits() - base
            q.bit_depth[m.index], q.exponent[m.index] = b, e

    def _choose(self, moves: list[_Move], allowance: int) -> list[_Move]:
        """Predicted decreases, most decrease per added bit first, within ``allowance``."""
        helpful = [m for m in moves if m.predicted < 0]
        self._exact_costs(helpful)
        helpful.sort(key=lambda m: m.predicted / max(m.cost, 1))
        chosen, spent = [], 0
        for move in helpful:
            if spent + max(move.cost, 0) > allowance:
                continue
            chosen.append(move)
            spent += max(move.cost, 0)
        return chosen

    @torch.no_grad()
    def _apply(self, moves: list[_Move]) -> None:
        quantizers = self.compression.quantizers
        for m in moves:
            quantizers[m.layer].bit_depth[m.index] = m.bits
            quantizers[m.layer].exponent[m.index] = m.exponent

    @torch.no_grad()
    def _put_back(self, state: dict[str, Tensor]) -> None:
        for name, quantizer in self.compression.quantizers.items():
            quantizer.bit_depth.copy_(state[f"{name}.b"])
            quantizer.exponent.copy_(state[f"{name}.e"])

    def _restore(self, step: int, before: Reading, allowance: int,
                 optimizer: torch.optim.Optimizer | None) -> FeedbackEvent | None:
        now = self._bit_state()
        bits_now = self.compression.storage_bits()
        chosen = self._choose(self._candidates(), allowance)
        val_before = self.validation() if self.validation is not None and chosen else None
        for attempt in range(1, self.config.backtracks + 2):
            if not chosen:
                break
            self._apply(chosen)
            added = self.compression.storage_bits() - bits_now
            while added > allowance and len(chosen) > 1:  # revivals also store consumers' inputs
                chosen = chosen[:-1]
                self._put_back(now)
                self._apply(chosen)
                added = self.compression.storage_bits() - bits_now
            after = self.monitor()
            kept = added <= allowance and after.loss < before.loss
            self.attempts.append({
                "step": step, "attempt": attempt, "channels": len(chosen),
                "bits_added": added, "predicted_change": sum(m.predicted for m in chosen),
                "monitor_loss_before": before.loss, "monitor_loss_after": after.loss,
                "val_loss_before": val_before,
                "val_loss_after": self.validation() if val_before is not None else None,
                "kept": kept})
            if kept:
                changed = self._zero_changed_moments(now, optimizer)
                return FeedbackEvent(
                    step=step, policy=self.config.policy, trigger_level=self.trigger_level,
                    monitor_loss_before=before.loss, monitor_loss_after=after.loss,
                    monitor_accuracy_before=before.accuracy,
                    monitor_accuracy_after=after.accuracy,
                    predicted_change=sum(m.predicted for m in chosen),
                    channels=sum(changed.values()), channels_by_layer=changed,
                    bits_added=added, attempts=attempt)
            self._put_back(now)
            chosen = chosen[: len(chosen) // 2]
        return None

    def _zero_changed_moments(self, before: dict[str, Tensor],
                              optimizer: torch.optim.Optimizer | None) -> dict[str, int]:
        """Forget Adam's moments of every changed entry; count changed channels per layer."""
        changed = {}
        for name, quantizer in self.compression.quantizers.items():
            mask = ((quantizer.bit_depth != before[f"{name}.b"])
                    | (quantizer.exponent != before[f"{name}.e"]))
            if mask.any():
                changed[name] = int(mask.sum())
                for param in (quantizer.bit_depth, quantizer.exponent):
                    _zero_moments(optimizer, param, mask)
        return changed

    # ------------------------------------------------------------------ shrinking

    def revivable(self) -> dict[str, Tensor]:
        """Module name -> channels a restore could still bring back: those alive in the last
        healthy snapshot, none once the run budget is spent.  Training may remove every
        other zero-bit channel for good (see :class:`sgsc.experiments.train.Trainer`)."""
        if self.bits_spent >= self.budget_bits(self.config.run_budget):
            return {}
        if not self._snapshot:
            return {n: torch.ones_like(q.bit_depth, dtype=torch.bool)
                    for n, q in self.compression.quantizers.items()}
        return {n: self._snapshot[f"{n}.b"] > 0 for n in self.compression.names}

    def pruned(self, result: PruneResult) -> None:
        """Cut the snapshot like the channels a prune removed."""
        for name in self.compression.names:
            index = self.compression.kept_rows(result, name)
            if index is None:
                continue
            for kind in ("b", "e"):
                key = f"{name}.{kind}"
                if key in self._snapshot:
                    self._snapshot[key] = self._snapshot[key][index.to(self._snapshot[key].device)]

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict:
        return {
            "events": [asdict(e) for e in self.events],
            "checks": list(self.checks),
            "attempts": list(self.attempts),
            "bits_spent": self.bits_spent,
            "float_level": self.float_level,
            "snapshot": dict(self._snapshot),
        }

    def load_state_dict(self, state: dict) -> None:
        self.events = [FeedbackEvent(**e) for e in state["events"]]
        self.checks = list(state["checks"])
        self.attempts = list(state.get("attempts", []))
        self.bits_spent = int(state["bits_spent"])
        self.float_level = float(state["float_level"])
        self._snapshot = dict(state["snapshot"])


def _zero_moments(optimizer: torch.optim.Optimizer | None, param: Tensor,
                  mask: Tensor) -> None:
    """Forget Adam's running moments for the changed entries of ``param``."""
    if optimizer is None or not mask.any():
        return
    state = optimizer.state.get(param, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][mask] = 0
