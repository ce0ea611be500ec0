"""What a model is trained to do: its task loss, its metrics over a split, its score, and
the data it is trained on as tensors.

Two kinds of model share every loop of the package: classifiers (``model(x)`` returns
logits, targets are class ids) and nanoGPT-style language models (``model(idx)`` returns
``(logits, loss)``, targets of -1 are padding).  This module is the one place that tells
them apart, so the training loop, the safety guidance and the baselines agree on what
"the loss" and "the accuracy" of a model mean.

:func:`as_tensor_dataset` takes any map-style ``Dataset`` of ``(x, y)`` pairs --
torchvision's MNIST with ``ToTensor()``, say -- and materialises it once as a
``TensorDataset``, which every loop here slices in memory.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset
from tqdm.auto import tqdm

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
             batch_size: int = 1000, per_class: bool = False) -> dict[str, float]:
    """Mean loss (and accuracy for classifiers) over a whole split, in eval mode.

    Language models: the loss is per real (non-padding) token.  With ``per_class`` a
    classifier's metrics also hold ``class_accuracy``: the accuracy on each class, in class
    order (NaN for a class without examples), from the same forward passes.
    """
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    language = is_language_model(model)
    hits: list[Tensor] = []  # per example: (target, predicted correctly), for per_class
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
            right = logits.argmax(1) == y
            correct += int(right.sum())
            count += len(y)
            if per_class:
                hits.append(torch.stack([y, right.long()]).cpu())
    model.train(was_training)
    metrics = {"loss": total_loss / max(count, 1)}
    if not language:
        metrics["accuracy"] = correct / max(count, 1)
        if per_class:
            targets, right = torch.cat(hits, dim=1) if hits else torch.zeros(2, 0).long()
            classes = int(logits.shape[1]) if hits else 0
            total = torch.bincount(targets, minlength=classes).double()
            good = torch.bincount(targets[right.bool()], minlength=classes).double()
            metrics["class_accuracy"] = (good / total).tolist()
    return metrics


def score(metrics: dict[str, float]) -> float:
    """Higher is better: accuracy for classifiers, negative loss (nats) for text."""
    return metrics["accuracy"] if "accuracy" in metrics else -metrics["loss"]


def as_tensor_dataset(dataset: object, name: str = "dataset",
                      progress: bool = False) -> TensorDataset:
    """``dataset`` as a ``TensorDataset(x, y)``, materialised once.

    A ``TensorDataset`` of at least two tensors is returned as it is.  Any other map-style
    dataset (``len`` and ``[i]``) whose items are ``(x, y)`` -- ``x`` a tensor or array,
    ``y`` an integer or a tensor -- is read item by item, in order, and stacked, so row
    ``i`` is item ``i``.  Anything else is a ``ValueError`` saying what shape is expected.
    """
    expected = (f"{name} must be a non-empty map-style Dataset of (x, y) pairs, x a tensor "
                "(torchvision: transform=transforms.ToTensor()) and y a class id or a "
                "tensor of targets")
    if isinstance(dataset, TensorDataset):
        if len(dataset.tensors) < 2 or len(dataset) == 0:
            raise ValueError(f"{expected}; got a TensorDataset of {len(dataset.tensors)} "
                             f"tensor(s) and {len(dataset)} rows")
        return dataset
    if not isinstance(dataset, Dataset) and not (hasattr(dataset, "__len__")
                                                 and hasattr(dataset, "__getitem__")):
        raise ValueError(f"{expected}; got {type(dataset).__name__}")
    try:
        n = len(dataset)
    except TypeError:
        raise ValueError(f"{expected}; got {type(dataset).__name__}, which has no len() "
                         "(an IterableDataset cannot be indexed)") from None
    if n == 0:
        raise ValueError(f"{expected}; got an empty {type(dataset).__name__}")
    xs, ys = [], []
    for i in tqdm(range(n), desc=f"reading {name}", disable=not progress, leave=False):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ValueError(f"{expected}; item {i} is a {type(item).__name__}")
        xs.append(_as_tensor(item[0], f"{name}[{i}][0]", expected))
        ys.append(_as_tensor(item[1], f"{name}[{i}][1]", expected))
    try:
        return TensorDataset(torch.stack(xs), torch.stack(ys))
    except RuntimeError as err:
        raise ValueError(f"{expected}; the items differ in shape ({err})") from None


def _as_tensor(value: object, where: str, expected: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (int, np.integer, float, np.floating, np.ndarray)):
        return torch.as_tensor(value)
    raise ValueError(f"{expected}; {where} is a {type(value).__name__}")
