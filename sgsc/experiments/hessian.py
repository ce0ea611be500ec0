"""Hessian traces by Hutchinson's estimator, for sensitivity-guided search (CB-TPE).

For a loss ``L`` and a parameter block ``w``, ``tr(H) = E[v^T H v]`` for any random ``v``
with ``E[v v^T] = I``; Rademacher probes (entries +-1) give the smallest variance.  One
probe costs one Hessian-vector product, i.e. one double backward pass, and the same
product also estimates the diagonal: ``diag(H) = E[v * Hv]``.  Per output channel that
gives the second-order (Optimal Brain Damage) saliency ``1/2 sum_i H_ii w_i^2``: the loss
increase, to second order at a minimum, of setting the channel to zero.

Only pure torch is used here (no data sets, no training), so the module sits on the floor
of quant/compress and is tested against the exact Hessian of a tiny model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class HessianEstimate:
    """Hutchinson estimates for a set of named parameter blocks.

    ``trace[name]``: ``tr(H)`` of that block (its diagonal block of the full Hessian);
    ``diagonal[name]``: ``diag(H)`` with the parameter's shape; ``samples``: probes used.
    """

    trace: dict[str, float]
    diagonal: dict[str, Tensor]
    samples: int

    def mean_trace(self, name: str) -> float:
        """Trace per element (HAWQ-v2's average trace): comparable across layer sizes."""
        return self.trace[name] / self.diagonal[name].numel()

    def channel_saliency(self, name: str, weight: Tensor) -> Tensor:
        """``1/2 sum_i H_ii w_i^2`` per output channel (dim 0), clamped at 0.

        The diagonal estimate of a single element can be negative (noise, or negative
        curvature away from a minimum); the clamp keeps "least important" meaning "least
        loss increase" rather than "most negative noise".
        """
        terms = 0.5 * self.diagonal[name] * weight.detach().to(self.diagonal[name]) ** 2
        return terms.reshape(terms.shape[0], -1).sum(dim=1).clamp_min(0.0)


def hutchinson(
    loss_fn: Callable[[], Tensor],
    params: dict[str, Tensor],
    samples: int = 32,
    generator: torch.Generator | None = None,
) -> HessianEstimate:
    """Estimate the trace and diagonal of each block ``params[name]`` of the loss's Hessian.

    Args:
        loss_fn: computes the scalar loss from the current parameters (called once; the
            graph is kept for all probes, so it should be a fixed batch).
        params: name -> tensor requiring grad (e.g. raw weights of the quantised layers).
        samples: Rademacher probes; the error falls as ``1/sqrt(samples)``.
        generator: for reproducible probes (CPU generator; probes are moved to the device).
    """
    if samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    if not params:
        raise ValueError("params is empty: nothing to estimate a Hessian trace for")
    names, tensors = list(params), list(params.values())
    for name, t in params.items():
        if not t.requires_grad:
            raise ValueError(f"parameter {name!r} does not require grad")
    loss = loss_fn()
    grads = torch.autograd.grad(loss, tensors, create_graph=True)
    diag_sum = [torch.zeros_like(t) for t in tensors]
    for i in range(samples):
        probes = [_rademacher(t, generator) for t in tensors]
        # H v for every block at once: d/dw (g . v).  Only the diagonal blocks of H enter
        # v_b^T (H v)_b in expectation, because the probes of different blocks are
        # independent; so the whole-model product gives every per-block trace at once.
        hv = torch.autograd.grad(grads, tensors, grad_outputs=probes,
                                 retain_graph=i < samples - 1)
        for acc, v, h in zip(diag_sum, probes, hv, strict=True):
            acc += v * h.detach()
    diagonal = {n: d / samples for n, d in zip(names, diag_sum, strict=True)}
    trace = {n: float(d.sum()) for n, d in diagonal.items()}
    return HessianEstimate(trace=trace, diagonal=diagonal, samples=samples)


def _rademacher(like: Tensor, generator: torch.Generator | None) -> Tensor:
    signs = torch.randint(0, 2, like.shape, generator=generator, dtype=torch.int8)
    return (signs.to(like.dtype) * 2 - 1).to(like.device)


def exact_diagonal(loss_fn: Callable[[], Tensor], param: Tensor) -> Tensor:
    """``diag(H)`` of one parameter block, with its shape, from the full Hessian's rows
    (tiny blocks only: one backward pass per element)."""
    flat_grad = torch.autograd.grad(loss_fn(), param, create_graph=True)[0].reshape(-1)
    diagonal = [torch.autograd.grad(flat_grad[i], param, retain_graph=True)[0].reshape(-1)[i]
                for i in range(flat_grad.numel())]
    return torch.stack(diagonal).reshape(param.shape)


def exact_trace(loss_fn: Callable[[], Tensor], param: Tensor) -> float:
    """``tr(H)`` of one parameter block from its full Hessian (tiny blocks only: O(n) passes)."""
    return float(exact_diagonal(loss_fn, param).sum())
