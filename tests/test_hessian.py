"""Hutchinson's estimates against the exact Hessian of a tiny model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sgsc.experiments.hessian import exact_diagonal, exact_trace, hutchinson


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))

    def loss():
        return F.cross_entropy(model(x), y)

    return model, loss


def test_hutchinson_is_within_ten_percent_of_the_exact_trace(tiny):
    model, loss = tiny
    params = {"first": model[0].weight, "last": model[2].weight}
    estimate = hutchinson(loss, params, samples=1000, generator=torch.Generator().manual_seed(0))
    for name, param in params.items():
        exact = exact_trace(loss, param)
        assert exact > 0
        assert abs(estimate.trace[name] - exact) <= 0.1 * abs(exact), name
        assert estimate.mean_trace(name) == pytest.approx(estimate.trace[name] / param.numel())
    assert estimate.samples == 1000


def test_the_diagonal_and_the_channel_saliency_follow_the_exact_hessian(tiny):
    model, loss = tiny
    weight = model[2].weight
    estimate = hutchinson(loss, {"last": weight}, samples=2000,
                          generator=torch.Generator().manual_seed(1))
    exact = exact_diagonal(loss, weight)
    assert estimate.diagonal["last"].shape == weight.shape
    error = (estimate.diagonal["last"] - exact).abs().max() / exact.abs().max()
    assert error < 0.15
    # OBD saliency: half the sum over each output channel of H_ii w_i^2, never negative
    saliency = estimate.channel_saliency("last", weight)
    expected = (0.5 * exact * weight.detach() ** 2).sum(dim=1).clamp_min(0)
    assert saliency.shape == (3,) and bool((saliency >= 0).all())
    assert torch.allclose(saliency, expected, rtol=0.2, atol=1e-4)


def test_the_same_generator_seed_gives_the_same_estimate(tiny):
    model, loss = tiny
    params = {"first": model[0].weight}
    a, b = (hutchinson(loss, params, samples=8, generator=torch.Generator().manual_seed(3))
            for _ in range(2))
    assert torch.equal(a.diagonal["first"], b.diagonal["first"])


def test_bad_inputs_are_refused(tiny):
    model, loss = tiny
    with pytest.raises(ValueError, match="positive"):
        hutchinson(loss, {"first": model[0].weight}, samples=0)
    with pytest.raises(ValueError, match="params is empty"):
        hutchinson(loss, {})
    frozen = model[0].weight.detach()
    with pytest.raises(ValueError, match="does not require grad"):
        hutchinson(loss, {"frozen": frozen})
