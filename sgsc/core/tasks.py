"""What a model is trained to do: its task loss, its metrics over a split, its score.

Two kinds of model share every loop of the package: classifiers (``model(x)`` returns
logits, targets are class ids) and nanoGPT-style language models (``model(idx)`` returns
``(logits, loss)``, targets of -1 are padding).  This module is the one place that tells
them apart, so the training loop, the safety guidance and the baselines agree on what
"the loss" and "the accuracy" of a model mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

IGNORE_INDEX = -1  # padding target of the text data sets (see sgsc.experiments.data)


def is_language_model(model: nn.Module) -> bool:
    """Language models take token ids and return (logits, loss), nanoGPT style."""
    return hasattr(model, "config") and hasattr(model.config, "vocab_size")


def logits_of(model: nn.Module, x: Tensor) -> Tensor:
    """The model's logits for a batch: (N, classes), or (B, T, vocab) for a language model."""
    return model(x)[0] if is_language_model(model) else model(x)


def task_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy for either kind of model (targets of -1 are padding)."""
    logits = logits_of(model, x)
    if logits.dim() == 3:
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)
    return F.cross_entropy(logits, y)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: TensorDataset, device: torch.device,
             batch_size: int = 1000) -> dict[str, float]:
    """Mean loss (and accuracy for classifiers) over a whole split, in eval mode.

    Language models: the loss is per real (non-padding) token.
    """
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    language = is_language_model(model)
    x_all, y_all = dataset.tensors[:2]
    for start in range(0, len(dataset), batch_size):  # in order, sliced, not collated
        x = x_all[start:start + batch_size].to(device)
        y = y_all[start:start + batch_size].to(device)
        logits = logits_of(model, x)
        if language:
            mask = y != IGNORE_INDEX
            total_loss += float(F.cross_entropy(logits[mask], y[mask], reduction="sum"))
            count += int(mask.sum())
        else:
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            count += len(y)
    model.train(was_training)
    metrics = {"loss": total_loss / max(count, 1)}
    if not language:
        metrics["accuracy"] = correct / max(count, 1)
    return metrics


def score(metrics: dict[str, float]) -> float:
    """Higher is better: accuracy for classifiers, negative loss (nats) for text."""
    return metrics["accuracy"] if "accuracy" in metrics else -metrics["loss"]
