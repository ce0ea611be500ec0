"""What a model is trained to do: loss and metrics for classifiers and language models."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from sgsc.core.tasks import (
    as_tensor_dataset,
    evaluate,
    is_language_model,
    logits_of,
    score,
    task_loss,
)
from sgsc.experiments.models import build_model


def test_a_classifier_loss_and_accuracy():
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
        model.bias.zero_()
    x = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0], [0, 0, 0]])
    y = torch.tensor([0, 1, 1, 0])
    assert not is_language_model(model)
    metrics = evaluate(model, TensorDataset(x, y), torch.device("cpu"), batch_size=3)
    assert metrics["accuracy"] == pytest.approx(0.75)  # the tie (row 4) goes to class 0
    expected = torch.nn.functional.cross_entropy(model(x), y).item()
    assert metrics["loss"] == pytest.approx(expected)
    assert task_loss(model, x, y).item() == pytest.approx(expected)
    assert score(metrics) == metrics["accuracy"]


def test_a_language_model_ignores_padding():
    model = build_model("char_transformer", vocab_size=5, block_size=4, n_embd=8, n_head=2,
                        n_layer=1).eval()
    assert is_language_model(model)
    idx = torch.tensor([[1, 2, 3, 4]])
    logits = logits_of(model, idx)
    assert logits.shape == (1, 4, 5)
    padded = torch.tensor([[2, 3, -1, -1]])
    expected = torch.nn.functional.cross_entropy(logits[0, :2], padded[0, :2]).item()
    assert task_loss(model, idx, padded).item() == pytest.approx(expected, rel=1e-5)
    metrics = evaluate(model, TensorDataset(idx, padded), torch.device("cpu"))
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5) and "accuracy" not in metrics
    assert score(metrics) == -metrics["loss"]
    assert math.isfinite(metrics["loss"])


def test_evaluate_puts_the_training_mode_back():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Dropout(0.5)).train()
    evaluate(model, TensorDataset(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)),
             torch.device("cpu"))
    assert model.training


class _TorchvisionStyle(torch.utils.data.Dataset):
    """What torchvision hands every user: items (image tensor, int label)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_any_map_style_dataset_becomes_the_same_tensors_once():
    x, y = torch.randn(7, 1, 4, 4), torch.arange(7) % 3
    tensors = as_tensor_dataset(_TorchvisionStyle(x, y), "train_set")
    assert torch.equal(tensors.tensors[0], x) and torch.equal(tensors.tensors[1], y)
    same = TensorDataset(x, y)
    assert as_tensor_dataset(same) is same  # a TensorDataset is used as it is


@pytest.mark.parametrize("bad, where", [
    ([], "empty"), (TensorDataset(torch.zeros(3)), "1 tensor"), ([torch.zeros(2)], "item 0"),
    ([(torch.zeros(2), "cat")], r"train_set\[0\]\[1\] is a str"), (object(), "got object"),
    ([(torch.zeros(2), 0), (torch.zeros(3), 1)], "differ in shape")])
def test_anything_else_says_what_shape_is_expected(bad, where):
    with pytest.raises(ValueError, match=rf"map-style Dataset of \(x, y\) pairs.*{where}"):
        as_tensor_dataset(bad, "train_set")


def test_evaluate_gives_per_class_accuracy_from_the_same_pass():
    model = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3, 2))  # predicts class 0 for x0 > x1, else 1
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 2])
    metrics = evaluate(model, TensorDataset(x, y), torch.device("cpu"), per_class=True)
    assert metrics["accuracy"] == 0.5
    assert metrics["class_accuracy"] == [1.0, 0.5, 0.0]
    assert "class_accuracy" not in evaluate(model, TensorDataset(x, y), torch.device("cpu"))
