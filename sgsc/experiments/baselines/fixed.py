"""Fixed-bit symmetric per-channel quantization on the self-compression engine.

Every baseline that quantizes to bit widths chosen from outside (uniform PTQ/QAT, the
CB-TPE search, DiffQ's learned bits converted to our format) uses :class:`FixedBits`: a
:class:`~sgsc.core.compress.SelfCompression` whose bit depths are frozen and whose exponents
follow ``max|w|`` of each output channel, i.e. classic symmetric per-channel min-max
quantization

    q(w) = s_c * round(w / s_c),   s_c = max|w_c| / (2^(b-1) - 1).

Reusing the engine means sizes come from the same ``storage_bits`` rule and the same
packed export as self-compression, and a channel given 0 bits is removed physically by
the same pruning -- that is how CB-TPE's width multipliers shrink a layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from sgsc.core.compress import SelfCompression
from sgsc.core.quant import init_exponent_maxabs

MAX_FIXED_BITS = 16
"""Beyond 16 bits a float32 weight gains nothing from more codes (24-bit mantissa, and
the export stores codes as int32); 16 is the largest width in the uniform sweep."""

Bits = int | Tensor


class FixedBits:
    """Freeze a model's quantised layers at given bit widths (symmetric, per channel).

    Args:
        model: wrapped in place, as by :class:`SelfCompression`.
        bits: one width for every quantised layer, or a dict module name -> width (an int,
            or a tensor with one width per output channel).  Every quantised layer must
            be covered.  Widths are integers in 1..16; 0 marks a removed channel.
        dead: module name -> bool mask of output channels to remove (bit depth 0).
        exclude: fnmatch patterns of layers to leave in float32 (see SelfCompression).
    """

    def __init__(self, model: nn.Module, bits: Bits | dict[str, Bits], *,
                 dead: dict[str, Tensor] | None = None, exclude: tuple[str, ...] = ()) -> None:
        self.sc = SelfCompression(model, init="maxabs", init_bits=8.0, exclude=exclude)
        per_layer = bits if isinstance(bits, dict) else dict.fromkeys(self.sc.names, bits)
        missing = [n for n in self.sc.names if n not in per_layer]
        unknown = [n for n in per_layer if n not in self.sc.names]
        if missing or unknown:
            raise ValueError(f"bits must name every quantised layer: missing {missing}, "
                             f"not quantised {unknown}")
        dead = dead or {}
        self.bits: dict[str, Tensor] = {}
        with torch.no_grad():
            for name, quantizer in self.sc.quantizers.items():
                widths = _channel_bits(name, per_layer[name], quantizer.out_channels)
                if name in dead:
                    widths = torch.where(dead[name].to(widths.device), 0, widths)
                self.bits[name] = widths
                quantizer.bit_depth.copy_(widths.to(quantizer.bit_depth))
                # Frozen: no optimizer step may move them (the trainer's quant group gets
                # no gradients), so the widths are exactly the ones chosen.
                quantizer.bit_depth.requires_grad_(False)
                quantizer.exponent.requires_grad_(False)
        self.sync()

    @property
    def model(self) -> nn.Module:
        return self.sc.model

    @torch.no_grad()
    def sync(self) -> None:
        """Set every exponent from the channel's current ``max|w|`` and its width."""
        for name, quantizer in self.sc.quantizers.items():
            weight = self.sc.model.get_submodule(name).parametrizations.weight.original
            widths = self.bits[name].to(weight.device)
            exponent = torch.zeros_like(quantizer.exponent)
            for b in widths.unique().tolist():
                rows = widths == b
                # A dead channel (b = 0) is exact zeros whatever its exponent; give it the
                # 1-bit exponent so the stored value stays finite and tidy.
                e = init_exponent_maxabs(weight, float(max(b, 1)))
                exponent[rows] = e[rows].to(exponent)
            quantizer.exponent.copy_(exponent)

    @contextmanager
    def tracking(self) -> Iterator[FixedBits]:
        """Re-sync the exponents before every forward pass (quantization-aware training).

        While training moves the weights, the scale must follow ``max|w|`` as in standard
        min-max QAT; a scale frozen at the start would clip weights that grow, and the
        straight-through estimator gives clipped weights no gradient to come back.
        """
        handle = self.sc.model.register_forward_pre_hook(lambda module, args: self.sync())
        try:
            yield self
        finally:
            handle.remove()
            self.sync()

    def mean_bits(self) -> float:
        """Average width over live quantised weights (removed channels excluded)."""
        report = self.sc.size_report()
        live = report["live_weights"]
        if not live:
            return 0.0
        return float(report["Q"]) * report["total_weights"] / live


def _channel_bits(name: str, bits: Bits, channels: int) -> Tensor:
    """One integer width per output channel, checked."""
    widths = torch.as_tensor(bits).detach().to(torch.float32).reshape(-1).cpu()
    if widths.numel() == 1:
        widths = widths.expand(channels).clone()
    if widths.numel() != channels:
        raise ValueError(f"{name}: {widths.numel()} widths for {channels} output channels")
    if (widths != widths.round()).any() or widths.min() < 0 or widths.max() > MAX_FIXED_BITS:
        raise ValueError(f"{name}: bit widths must be integers in 1..{MAX_FIXED_BITS} "
                         f"(0 removes a channel), got {sorted(set(widths.tolist()))}")
    return widths
