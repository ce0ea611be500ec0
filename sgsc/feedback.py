"""Feedback controller: watch the preservation set and restore precision when it suffers.

Every ``every`` steps the controller evaluates the preservation set (accuracy and loss)
and compares the accuracy with a *reference level*: the best seen so far (default) or the
value when compression started.  Comparing with the reference rather than with the
previous evaluation means slow drift triggers too.  While the set is healthy, the bit
depths and exponents are snapshotted.  On a drop larger than ``threshold``:

* ``policy="sensitivity"``: the channels that died since the last healthy snapshot get
  their bit depth back, and the live channels with the largest preservation-loss
  sensitivity ``|dL_pres/db|`` gain ``restore_bits`` bits;
* ``policy="rollback"``: every bit depth and exponent returns to the last healthy snapshot.

Changes happen under ``torch.no_grad()``; the Adam moments of every changed entry are
zeroed so that stale momentum does not push the restored bits straight back down.  Every
intervention is logged as a :class:`FeedbackEvent`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from sgsc.compress import SelfCompression

POLICIES = ("sensitivity", "rollback")
REFERENCES = ("best", "start")


@dataclass
class FeedbackConfig:
    """How often to look, what counts as a drop, and how to respond."""

    every: int = 50  # optimizer steps between preservation-set evaluations
    threshold: float = 0.02  # accuracy drop (absolute, 0..1) that triggers a restore
    reference: str = "best"  # "best" so far, or the value at the "start" of compression
    policy: str = "sensitivity"
    restore_fraction: float = 0.05  # share of live channels that gain bits (sensitivity)
    restore_bits: float = 1.0

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"feedback every must be a positive step count, got {self.every}")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"feedback threshold is an accuracy drop in [0, 1], "
                             f"got {self.threshold}")
        if self.reference not in REFERENCES:
            raise ValueError(f"feedback reference must be one of {REFERENCES}, "
                             f"got {self.reference!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"feedback policy must be one of {POLICIES}, got {self.policy!r}")
        if not 0 <= self.restore_fraction <= 1 or self.restore_bits <= 0:
            raise ValueError("restore_fraction must be in [0, 1] and restore_bits > 0")


@dataclass
class FeedbackEvent:
    """One intervention: when, why, and what it changed."""

    step: int
    accuracy: float
    reference: float
    loss: float
    policy: str
    channels_restored: int
    bits_added: float


@dataclass
class FeedbackController:
    """Preservation-set monitor bound to one :class:`SelfCompression`.

    ``evaluate`` returns (accuracy, loss) on the preservation set without gradients;
    ``preservation_loss`` returns the loss with gradients (for sensitivities).
    """

    compression: SelfCompression
    evaluate: Callable[[], tuple[float, float]]
    preservation_loss: Callable[[], torch.Tensor]
    config: FeedbackConfig = field(default_factory=FeedbackConfig)
    events: list[FeedbackEvent] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    reference_accuracy: float | None = None
    _snapshot: dict[str, torch.Tensor] = field(default_factory=dict)

    def maybe_check(self, step: int, optimizer: torch.optim.Optimizer | None = None
                    ) -> FeedbackEvent | None:
        """Evaluate when ``step`` is a multiple of ``config.every``; restore if needed."""
        if step % self.config.every:
            return None
        return self.check(step, optimizer)

    def check(self, step: int, optimizer: torch.optim.Optimizer | None = None
              ) -> FeedbackEvent | None:
        """Evaluate the preservation set now and intervene on a drop."""
        accuracy, loss = self.evaluate()
        self.checks.append({"step": step, "accuracy": accuracy, "loss": loss})
        if self.reference_accuracy is None:
            self.reference_accuracy = accuracy
        drop = self.reference_accuracy - accuracy
        if drop <= self.config.threshold:
            self._snapshot = self._bit_state()
            if self.config.reference == "best":
                self.reference_accuracy = max(self.reference_accuracy, accuracy)
            return None
        channels, bits = self._restore(optimizer)
        event = FeedbackEvent(step, accuracy, self.reference_accuracy, loss,
                              self.config.policy, channels, bits)
        self.events.append(event)
        return event

    # ------------------------------------------------------------------ restoring

    def _bit_state(self) -> dict[str, torch.Tensor]:
        state = {}
        for name in self.compression.quantizers:
            state[f"{name}.b"] = self.compression.bit_depths()[name].detach().clone()
            state[f"{name}.e"] = self.compression.exponents()[name].detach().clone()
        return state

    def _restore(self, optimizer: torch.optim.Optimizer | None) -> tuple[int, float]:
        if not self._snapshot:  # nothing healthy seen yet: start from the present
            self._snapshot = self._bit_state()
        if self.config.policy == "rollback":
            return self._rollback(optimizer)
        return self._raise_sensitive(optimizer)

    def _rollback(self, optimizer: torch.optim.Optimizer | None) -> tuple[int, float]:
        channels, bits = 0, 0.0
        with torch.no_grad():
            for name in self.compression.quantizers:
                for kind, param in (("b", self.compression.bit_depths()[name]),
                                    ("e", self.compression.exponents()[name])):
                    saved = self._snapshot[f"{name}.{kind}"]
                    changed = param != saved
                    if kind == "b":
                        channels += int(changed.sum())
                        bits += float((saved.clamp(min=0) - param.clamp(min=0)).sum())
                    param.copy_(saved)
                    _zero_moments(optimizer, param, changed)
        return channels, bits

    def _raise_sensitive(self, optimizer: torch.optim.Optimizer | None) -> tuple[int, float]:
        depths = self.compression.bit_depths()
        grads = self._bit_gradients()
        restore = self.config.restore_bits
        channels, bits = 0, 0.0
        live_scores = []
        with torch.no_grad():
            # Channels zeroed since the last healthy snapshot come back first.
            for name, b in depths.items():
                saved = self._snapshot[f"{name}.b"]
                revived = (b <= 0) & (saved > 0)
                if revived.any():
                    new = torch.maximum(saved[revived], torch.full_like(saved[revived], restore))
                    bits += float(new.sum())
                    b[revived] = new
                    channels += int(revived.sum())
                    _zero_moments(optimizer, b, revived)
                live = b > 0
                live_scores.extend((float(s), name, int(i))
                                   for i, s in zip(live.nonzero().flatten().tolist(),
                                                   grads[name][live].abs().tolist(),
                                                   strict=True))
            n_raise = math.ceil(self.config.restore_fraction * len(live_scores))
            for _, name, index in sorted(live_scores, reverse=True)[:n_raise]:
                depths[name][index] += restore
                mask = torch.zeros_like(depths[name], dtype=torch.bool)
                mask[index] = True
                _zero_moments(optimizer, depths[name], mask)
            channels += n_raise
            bits += n_raise * restore
        return channels, bits

    def _bit_gradients(self) -> dict[str, torch.Tensor]:
        depths = self.compression.bit_depths()
        loss = self.preservation_loss()
        grads = torch.autograd.grad(loss, list(depths.values()), allow_unused=True)
        return {name: (torch.zeros_like(b) if g is None else g)
                for (name, b), g in zip(depths.items(), grads, strict=True)}

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict:
        return {
            "events": [asdict(e) for e in self.events],
            "checks": list(self.checks),
            "reference_accuracy": self.reference_accuracy,
            "snapshot": dict(self._snapshot),
        }

    def load_state_dict(self, state: dict) -> None:
        self.events = [FeedbackEvent(**e) for e in state["events"]]
        self.checks = list(state["checks"])
        self.reference_accuracy = state["reference_accuracy"]
        self._snapshot = dict(state["snapshot"])


def _zero_moments(optimizer: torch.optim.Optimizer | None, param: torch.Tensor,
                  mask: torch.Tensor) -> None:
    """Forget Adam's running moments for the changed entries of ``param``."""
    if optimizer is None or not mask.any():
        return
    state = optimizer.state.get(param, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][mask] = 0
