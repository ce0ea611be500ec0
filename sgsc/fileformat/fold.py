"""BatchNorm folded into the quantized layer before it, for an inference file.

In eval mode a BatchNorm computes, per channel, ``s·x + t`` with ``s = γ/√(var + ε)`` and
``t = β − μ·s``: nothing a deployed model needs to store as four tensors.  When it
follows a quantized producer (a link of the channel graph with that BatchNorm as its
follower) and ``s > 0`` on every channel:

* **the scale moves into the producer**: its raw weights and bias are multiplied by
  ``s`` and its exponents rise by ``log2 s``, so its integer codes do not change
  (``2^-e'·w' = 2^-e·w``) and neither do the bits it costs;
* **the shift goes to a bias**: the producer's, when the BatchNorm reads the producer's
  output directly; the consumers', when a ReLU stands between them (a ReLU commutes with
  a positive scale, not with a shift) -- ``t`` reaches an unpadded consumer on every
  position, so it adds ``Σ W·t`` to its bias.

Every fold is checked on an example input: the model's outputs must agree with the
unfolded model's within float rounding, or that BatchNorm is left as it was.  A folded
BatchNorm becomes the identity (weight 1, bias 0, mean 0, variance ``1 − ε``); the file
stores none of its tensors and the loader sets them so again (:func:`identity`).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from sgsc.structure.graph import ChannelDependency
from sgsc.structure.prune import raw_weight

if TYPE_CHECKING:
    from sgsc.core.compress import SelfCompression

# outputs agree "within float rounding": relative to the output's largest magnitude
TOLERANCE = 1e-4


def identity(bn: _BatchNorm, channels: int) -> None:
    """Make ``bn`` (resized to ``channels``) compute the identity in eval mode."""
    device = bn.weight.device if bn.weight is not None else torch.device("cpu")
    ones, zeros = torch.ones(channels, device=device), torch.zeros(channels, device=device)
    with torch.no_grad():
        if bn.affine:
            bn.weight = nn.Parameter(ones.clone())
            bn.bias = nn.Parameter(zeros.clone())
        bn.running_mean = zeros.clone()
        bn.running_var = ones - bn.eps  # sqrt(var + eps) is exactly 1
    bn.num_features = channels


def fold_batchnorms(sc: SelfCompression, example_input: Any) -> list[tuple[str, str]]:
    """Fold every BatchNorm follower of a quantized producer that folds exactly (module
    doc) into ``sc``'s model, in place; returns the ``(batchnorm, producer)`` pairs folded.
    ``sc`` should be a copy: its model changes."""
    model = sc.model
    folded = []
    for link in sc.graph.channels:
        if len(link.followers) != 1 or link.coupled or link.producer not in sc.names:
            continue
        bn = model.get_submodule(link.followers[0])
        if not isinstance(bn, _BatchNorm) or not bn.track_running_stats:
            continue
        if _fold_one(sc, link, bn, example_input):
            folded.append((link.followers[0], link.producer))
    return folded


def _outputs(model: nn.Module, example_input: Any) -> Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(*example_input) if isinstance(example_input, (tuple, list)) \
            else model(example_input)
    model.train(was_training)
    return out[0] if isinstance(out, tuple) else out


def _agrees(model: nn.Module, example_input: Any, reference: Tensor) -> bool:
    out = _outputs(model, example_input)
    scale = float(reference.abs().max()) or 1.0
    return bool(torch.allclose(out, reference, rtol=TOLERANCE, atol=TOLERANCE * scale))


def _fold_one(sc: SelfCompression, link: ChannelDependency, bn: _BatchNorm,
              example_input: Any) -> bool:
    model = sc.model
    with torch.no_grad():
        s = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(
            bn.running_var + bn.eps)
        t = (bn.bias if bn.affine else torch.zeros_like(s)) - bn.running_mean * s
    if not bool((s > 0).all()) or not bool(torch.isfinite(s).all()):
        return False  # a negative scale would flip the codes' sign: not folded
    reference = _outputs(model, example_input)
    saved = copy.deepcopy(model.state_dict())
    for shift_into in (_into_producer, _into_consumers):
        _scale_producer(sc, link.producer, s)
        if shift_into(sc, link, t):
            identity(bn, s.numel())
            if _agrees(model, example_input, reference):
                return True
        model.load_state_dict(saved)  # undone: try the other place, or leave it be
    return False


def _scale_producer(sc: SelfCompression, name: str, s: Tensor) -> None:
    """Multiply the producer's rows by ``s`` with unchanged codes: weights and bias times
    ``s``, exponents plus ``log2 s``."""
    producer = sc.model.get_submodule(name)
    with torch.no_grad():
        weight = raw_weight(producer)
        weight.mul_(s.view(-1, *([1] * (weight.dim() - 1))))
        sc.quantizers[name].exponent.add_(torch.log2(s))
        if producer.bias is not None:
            producer.bias.mul_(s)


def _into_producer(sc: SelfCompression, link: ChannelDependency, t: Tensor) -> bool:
    producer = sc.model.get_submodule(link.producer)
    if producer.bias is None:
        return False
    with torch.no_grad():
        producer.bias.add_(t)
    return True


def _into_consumers(sc: SelfCompression, link: ChannelDependency, t: Tensor) -> bool:
    for name in link.consumers:
        consumer = sc.model.get_submodule(name)
        if getattr(consumer, "bias", None) is None:
            return False
        with torch.no_grad():
            weight = consumer.weight  # the quantized weight, as the forward pass uses it
            per_unit = weight.shape[1] // t.numel()
            if weight.shape[1] % t.numel():
                return False
            columns = weight.reshape(weight.shape[0], t.numel(), per_unit, -1)
            consumer.bias.add_(torch.einsum("ocpk,c->o", columns, t))
    return True
