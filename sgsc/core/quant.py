"""Differentiable per-channel quantisation (Cséfalvay & Imber 2023, "Self-Compressing NNs").

Every output channel ``c`` of a weight has a learnable bit depth ``b_c`` and exponent
``e_c``.  The forward pass stores ``w`` as ``2^e * round(clamp(2^-e * w, lo, hi))`` with
``lo = -2^(b-1)`` and ``hi = 2^(b-1) - 1``, i.e. a ``ceil(b)``-bit two's complement
integer times a power-of-two scale.  Rounding uses a straight-through estimator, so:

* ``w`` gets gradient 1 inside ``[lo, hi]`` and 0 where the clamp binds;
* ``e`` gets ``ln2 * 2^e * (round(z) - z)`` inside the range (the rounding error it can
  trade) plus the clamp term;
* ``b`` gets gradient only where the clamp binds, through ``lo(b)`` / ``hi(b)``.

``b`` enters through :func:`effective_bits` -- clamped to ``[0, MAX_BITS]`` (24) -- so a
channel pushed to ``b <= 0`` is exactly zero and can be removed, and a start at 32 bits
acts as 24, the widest code float32 computes exactly.  Fractional ``b`` is legal: the range is
then a fraction of the ``ceil(b)``-bit one, and storage is charged ``ceil(b)`` bits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# The widest code: float32 holds every integer up to 2^24 exactly, and quantize() computes
# codes in float32, so a 25-bit or wider range would round its top code out of range.
MAX_BITS = 24


class RoundSTE(torch.autograd.Function):
    """``torch.round`` forward, identity backward (the straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def _per_channel(v: Tensor, weight: Tensor) -> Tensor:
    """View a (out_channels,) vector so it broadcasts over the rest of ``weight``."""
    return v.view(-1, *([1] * (weight.dim() - 1)))


def effective_bits(bit_depth: Tensor) -> Tensor:
    """The bit depth the quantizer uses: ``b`` clamped to ``[0, MAX_BITS]`` (zero gradient
    outside; ``relu`` then ``clamp``, so that below 24 bits it is exactly ``relu``)."""
    return torch.relu(bit_depth).clamp(max=MAX_BITS)


def _clamped(weight: Tensor, bit_depth: Tensor, exponent: Tensor) -> tuple[Tensor, Tensor]:
    """``(clamp(2^-e * w, lo(b), hi(b)), e)``: the shared first half of quantize/codes.

    Kept in one place so that :func:`quantize` and :func:`integer_codes` run the very
    same float ops and therefore agree bit for bit.
    """
    b = _per_channel(effective_bits(bit_depth), weight)
    e = _per_channel(exponent, weight)
    half_range = torch.exp2(b - 1)
    z = torch.clamp(torch.exp2(-e) * weight, -half_range, half_range - 1)
    return z, e


def quantize(weight: Tensor, bit_depth: Tensor, exponent: Tensor) -> Tensor:
    """Fake-quantise ``weight`` per output channel (dim 0) with bit depths and exponents.

    Differentiable in all three arguments (see the module docstring).  Channels with
    ``bit_depth <= 0`` come out as exact (+0.0) zeros.
    """
    z, e = _clamped(weight, bit_depth, exponent)
    # round(-0.4) is -0.0; adding +0.0 turns every negative zero into +0.0 so the result
    # equals exp2(e) * codes.float() bit for bit (integer codes carry no sign of zero).
    return torch.exp2(e) * (RoundSTE.apply(z) + 0.0)


@torch.no_grad()
def integer_codes(weight: Tensor, bit_depth: Tensor, exponent: Tensor) -> tuple[Tensor, Tensor]:
    """The integers that :func:`quantize` scales, and the bits each channel needs.

    Returns ``(codes, bits)``: ``codes`` (int32, shape of ``weight``) with
    ``torch.exp2(exponent).view(-1, 1, ...) * codes.float()`` equal to ``quantize(...)``
    bit for bit, and ``bits = ceil(effective_bits(bit_depth))`` (int64, one per channel);
    every code of channel ``c`` fits in ``bits[c]``-bit two's complement (and is 0 when
    bits is 0).
    """
    z, _ = _clamped(weight, bit_depth, exponent)
    codes = torch.round(z).to(torch.int32)
    bits = torch.ceil(effective_bits(bit_depth)).to(torch.int64)
    return codes, bits


def init_exponent_maxabs(weight: Tensor, bits: float) -> Tensor:
    """Per-channel exponents that put each channel's ``max|w|`` at the top of its range.

    ``e = log2(max|w| / (2^(bits-1) - 1))`` (continuous, not rounded up): the largest
    weight lands exactly on the largest code, so nothing clips and the step
    ``max|w| / (2^(bits-1) - 1)`` is the finest that avoids clipping -- at 8 bits the
    first quantisation is near-lossless.  Rounding ``e`` up to an integer would waste up
    to half the codes; ``e`` is a learned float32 (also in the export header) anyway.

    For ``bits < 2`` the positive range has fewer than one code, so ``max|w|`` is mapped
    to 1 instead.  All-zero channels (any ``e`` quantises them exactly) borrow the
    layer's largest ``max|w|`` so they get a sensible scale if they wake up; an all-zero
    layer uses ``max|w| = 1``.
    """
    maxabs = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)
    layer_max = maxabs.max()
    fallback = layer_max if layer_max > 0 else torch.ones_like(layer_max)
    maxabs = torch.where(maxabs > 0, maxabs, fallback)
    levels = max(2.0 ** (bits - 1) - 1, 1.0)
    return torch.log2(maxabs) - math.log2(levels)


class ChannelQuantizer(nn.Module):
    """A ``torch.nn.utils.parametrize`` parametrization: weight -> quantised weight.

    Holds one bit depth and one exponent per output channel (dim 0 of the weight) as
    Parameters, so an optimizer can train them next to the weights.
    """

    def __init__(self, bit_depth: Tensor, exponent: Tensor) -> None:
        """``bit_depth`` and ``exponent``: initial values, shape (out_channels,)."""
        super().__init__()
        if bit_depth.shape != exponent.shape or bit_depth.dim() != 1:
            raise ValueError(
                f"bit_depth {tuple(bit_depth.shape)} and exponent {tuple(exponent.shape)} "
                "must both have shape (out_channels,)"
            )
        self.bit_depth = nn.Parameter(bit_depth.detach().clone())
        self.exponent = nn.Parameter(exponent.detach().clone())

    @classmethod
    def constant(
        cls, out_channels: int, bits: float, exponent: float, *, like: Tensor | None = None
    ) -> ChannelQuantizer:
        """Every channel starts at the same ``bits`` (at most ``MAX_BITS``) and
        ``exponent`` (SCNN's init)."""
        kw = {} if like is None else {"dtype": like.dtype, "device": like.device}
        return cls(torch.full((out_channels,), min(float(bits), MAX_BITS), **kw),
                   torch.full((out_channels,), float(exponent), **kw))

    @classmethod
    def maxabs(cls, weight: Tensor, bits: float) -> ChannelQuantizer:
        """``bits`` everywhere, exponents from :func:`init_exponent_maxabs`.  A start
        above ``MAX_BITS`` begins at ``MAX_BITS``: that is the widest range there is."""
        bits = min(float(bits), MAX_BITS)
        return cls(weight.new_full((weight.shape[0],), bits),
                   init_exponent_maxabs(weight, bits).to(weight.dtype))

    @property
    def out_channels(self) -> int:
        """Number of channels (rows) this quantizer covers."""
        return self.bit_depth.shape[0]

    def forward(self, weight: Tensor) -> Tensor:
        return quantize(weight, self.bit_depth, self.exponent)

    @torch.no_grad()
    def select_channels(self, index: Tensor) -> None:
        """Keep only channels ``index`` (new Parameters; optimizer state must be remapped)."""
        self.bit_depth = nn.Parameter(self.bit_depth[index].clone(),
                                      requires_grad=self.bit_depth.requires_grad)
        self.exponent = nn.Parameter(self.exponent[index].clone(),
                                     requires_grad=self.exponent.requires_grad)

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}"
