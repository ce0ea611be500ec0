"""The method's loss, composed in one place.

    loss = task + l1_weights·mean|w| + l1_dead_bias·L1(dead biases) + gamma·Q
                + lambda_pres·task(preservation batch)

:class:`CompressionLoss` is what the :class:`~sgsc.experiments.train.Trainer` calls and
what a user's own loop calls, so the README's ten lines train the method that made the
reported results::

    sc = SelfCompression(model)
    guard = SafetyGuidance(float_model, sc, train_set, size=1000, feedback=FeedbackConfig())
    loss_fn = CompressionLoss(sc, guard, gamma=0.05, l1_weights=0.3, lambda_pres=1.0)
    for x, y in DataLoader(guard.task_dataset, batch_size=128, shuffle=True):
        loss = loss_fn(x, y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        guard.step(optimizer)

Each term, and why it is there:

* **task** -- cross-entropy (per real token for a language model), :mod:`sgsc.core.tasks`.
* **L1** (``l1_weights``) -- the mean ``|w|`` over every weight matrix and kernel, so a
  coefficient means the same on a small and a large model; small weights need fewer bits.
* **dead bias** (``l1_dead_bias``) -- ``|bias|`` of zero-bit channels (and of the
  BatchNorm after them), so a removed channel's constant output is zero and its removal
  exact (:meth:`SelfCompression.dead_bias_l1`).
* **size** (``gamma``) -- ``Q``, the average bits per weight of the original model
  (:meth:`SelfCompression.size_loss`): what training trades accuracy against.
* **preservation** (``lambda_pres``) -- the task loss on a batch of the preservation set,
  with BatchNorm untouched (:meth:`SafetyGuidance.preservation_loss`).

A term is computed only where it exists: size and dead bias with a
:class:`SelfCompression`, preservation with a :class:`SafetyGuidance` and a weight above
0; L1 with a weight above 0.  :meth:`CompressionLoss.terms` gives them unweighted, for logs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from sgsc.core.compress import SelfCompression
from sgsc.core.safety import SafetyGuidance
from sgsc.core.tasks import task_loss

TERMS = ("task", "l1", "size", "dead_bias", "preservation")


class CompressionLoss:
    """The loss of float training, self-compression or safety-guided self-compression.

    Args:
        target: the :class:`SelfCompression` being trained, or a plain model (float
            training: no size or dead-bias term).
        safety: the :class:`SafetyGuidance` of ``target`` (the preservation term), or None.
        gamma: weight of ``Q`` (bits per weight).
        l1_weights: weight of the mean ``|w|`` over every weight matrix.
        l1_dead_bias: weight of the L1 of zero-bit channels' biases.
        lambda_pres: weight of the preservation term.
        size: the size term ``gamma`` weighs, in bits per weight, when it is not the
            :class:`SelfCompression`'s ``Q`` -- e.g. DiffQ's expected model size, or an
            estimate of the entropy-coded size.  Default: ``target.size_loss``.
    """

    def __init__(self, target: SelfCompression | nn.Module, safety: SafetyGuidance | None = None,
                 *, gamma: float = 0.0, l1_weights: float = 0.0, l1_dead_bias: float = 1e-2,
                 lambda_pres: float = 0.0, size: Callable[[], Tensor] | None = None) -> None:
        weights = {"gamma": gamma, "l1_weights": l1_weights, "l1_dead_bias": l1_dead_bias,
                   "lambda_pres": lambda_pres}
        bad = [f"{k}={v!r}" for k, v in weights.items()
               if isinstance(v, bool) or not isinstance(v, (int, float))
               or not math.isfinite(v) or v < 0]
        if bad:
            raise ValueError("loss weights must be finite numbers >= 0: " + ", ".join(bad))
        if isinstance(target, SelfCompression):
            self.compression, self.model = target, target.model
        elif isinstance(target, nn.Module):
            self.compression, self.model = None, target
        else:
            raise ValueError("target must be a SelfCompression or an nn.Module, got "
                             f"{type(target).__name__}")
        if size is None and self.compression is not None:
            size = self.compression.size_loss
        if gamma and size is None:
            raise ValueError("gamma > 0 weighs the size term, which needs a SelfCompression: "
                             "CompressionLoss(SelfCompression(model), ...) (or size=...)")
        self.size = size
        if safety is not None and safety.compression is not self.compression:
            raise ValueError("safety must guard this loss's own SelfCompression")
        if lambda_pres and safety is None:
            raise ValueError("lambda_pres > 0 weighs the preservation term, which needs a "
                             "SafetyGuidance: CompressionLoss(sc, guard, ...)")
        self.safety = safety
        self.gamma, self.l1_weights = gamma, l1_weights
        self.l1_dead_bias, self.lambda_pres = l1_dead_bias, lambda_pres

    @property
    def weights(self) -> dict[str, float]:
        """Each term's weight, by the name :meth:`terms` gives it."""
        return {"task": 1.0, "l1": self.l1_weights, "size": self.gamma,
                "dead_bias": self.l1_dead_bias, "preservation": self.lambda_pres}

    def terms(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Every term of the loss for one batch, unweighted (for logs), in :data:`TERMS`
        order; the preservation term draws its own batch from the preservation set."""
        terms = {"task": task_loss(self.model, x, y)}
        if self.l1_weights:
            terms["l1"] = weights_l1(self.model)
        if self.size is not None:
            terms["size"] = self.size()
        if self.compression is not None and self.l1_dead_bias:
            terms["dead_bias"] = self.compression.dead_bias_l1()
        if self.safety is not None and self.lambda_pres:
            terms["preservation"] = self.safety.preservation_loss()
        return terms

    def total(self, terms: dict[str, Tensor]) -> Tensor:
        """The weighted sum of ``terms`` (the output of :meth:`terms`)."""
        weights = self.weights
        return sum(weights[k] * v for k, v in terms.items())

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """The loss of one batch, ready for ``backward()``."""
        return self.total(self.terms(x, y))


def weights_l1(model: nn.Module) -> Tensor:
    """The L1 term: mean ``|w|`` over every weight matrix and kernel (2+ dims), so that a
    coefficient means the same on a small and on a large model."""
    weights = [p for p in model.parameters() if p.dim() >= 2]
    return sum(p.abs().sum() for p in weights) / sum(p.numel() for p in weights)
