"""What a model is trained to do: loss and metrics for classifiers and language models."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from sgsc.core.tasks import evaluate, is_language_model, logits_of, score, task_loss
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
