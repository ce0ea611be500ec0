"""Self-compression: learn a bit depth per output channel and let the unneeded ones reach 0.

:class:`SelfCompression` wraps a model in place: every selected Conv1d/Conv2d/Linear
(and, on request, Embedding) weight gets a :class:`~sgsc.core.quant.ChannelQuantizer`
parametrization.  Training minimises ``task_loss + gamma * sc.size_loss()``; channels whose
bit depth hits 0 are exact zeros, :meth:`SelfCompression.prune` removes them physically,
and :meth:`SelfCompression.storage_bits` says what the exported file will cost.

Sizes use the model's :class:`~sgsc.structure.graph.ChannelGraph`: a zero-bit producer channel also
frees the consumer's input columns that read it, and a head whose q, k and v rows are all
zero frees its columns of the output projection (SCNN's refined size term).
"""

from __future__ import annotations

import copy
import math
import warnings
from fnmatch import fnmatch
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from sgsc.core.quant import ChannelQuantizer, effective_bits
from sgsc.structure.graph import ChannelDependency, ChannelGraph
from sgsc.structure.plan import Cut, plan_removal, removed_columns, removed_rows
from sgsc.structure.prune import PruneResult, prune_channels, raw_weight
from sgsc.structure.trace import trace_channel_graph

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
DEPTH_BITS = 5  # a bit depth 0..24 fits in 5 bits
HEADER_BITS = DEPTH_BITS + 32
"""Per stored row: the bit depth in 5 bits plus the exponent as float32 (the file's
layout, :mod:`sgsc.fileformat.export`)."""


def _matches(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    return any(fnmatch(name, p) for p in patterns)


class SelfCompression:
    """Per-channel learnable quantisation of a model, with size accounting and pruning.

    Args:
        model: wrapped in place (parametrizations are registered on its modules).
        init_bits: starting bit depth of every channel (above ``quant.MAX_BITS`` = 24,
            the widest code float32 computes exactly, it starts at 24).
        init: ``"maxabs"`` -- exponents put each channel's ``max|w|`` at the top of the
            ``init_bits`` range (near-lossless start); ``"scnn"`` -- every exponent is
            ``init_exponent`` (the original study's fixed start, e.g. b=2, e=-8).
        init_exponent: the exponent for ``init="scnn"``.
        include: fnmatch patterns on module names to quantise (None: all).
        exclude: fnmatch patterns on module names to leave alone.
        quantize_embeddings: also quantise ``nn.Embedding`` (a channel is a token's row).
        graph: channel links; default ``model.channel_graph()`` if the model declares
            one, else traced from ``example_input``
            (:func:`sgsc.structure.trace.trace_channel_graph`), else traced on the input
            of the model's first forward pass -- no hints needed.  Layers the tracer cannot
            follow keep their channels (one warning names them).
        example_input: one input batch (a tuple is unpacked) for tracing the graph and
            for the probe pass of pruning; default ``model.example_input()`` if it exists,
            else the first rows of the first forward pass's input.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        init_bits: float = 8.0,
        init: str = "maxabs",
        init_exponent: float = -8.0,
        include: tuple[str, ...] | list[str] | None = None,
        exclude: tuple[str, ...] | list[str] = (),
        quantize_embeddings: bool = False,
        graph: ChannelGraph | None = None,
        example_input: Any = None,
    ) -> None:
        if init not in ("maxabs", "scnn"):
            raise ValueError(f"init must be 'maxabs' or 'scnn', got {init!r}")
        self.model = model
        self.example_input = example_input
        self._first_forward = None
        if graph is None and hasattr(model, "channel_graph"):
            graph = model.channel_graph()
        elif graph is None and example_input is not None:
            graph = self._traced(example_input)
        elif graph is None:  # no hints: traced on the input of the first forward pass
            self._first_forward = model.register_forward_pre_hook(self._trace_first_input)
        self.graph = graph if graph is not None else ChannelGraph()
        kinds = QUANTIZABLE + ((nn.Embedding,) if quantize_embeddings else ())
        self.names: list[str] = []
        for name, module in list(model.named_modules()):
            if not isinstance(module, kinds) or _matches(name, exclude):
                continue
            if include is not None and not _matches(name, include):
                continue
            if parametrize.is_parametrized(module, "weight"):
                raise ValueError(f"{name or 'model'}.weight is already parametrized")
            weight = module.weight
            if init == "maxabs":
                quantizer = ChannelQuantizer.maxabs(weight, init_bits)
            else:
                quantizer = ChannelQuantizer.constant(
                    weight.shape[0], init_bits, init_exponent, like=weight
                )
            parametrize.register_parametrization(module, "weight", quantizer)
            self.names.append(name)
        # Fixed at wrap time: Q and removed_fraction stay relative to the original model
        # after pruning shrinks it.
        self.total_weights = sum(raw_weight(self._module(n)).numel() for n in self.names)
        self.total_channels = sum(raw_weight(self._module(n)).shape[0] for n in self.names)

    # ---- the channel graph, traced when nobody declared it ---------------------------------

    def _trace_first_input(self, module: nn.Module, args: tuple) -> None:
        """Forward pre-hook, once: trace the graph on (the first rows of) the first input."""
        self._first_forward.remove()
        self._first_forward = None
        example = _first_rows(args)
        if self.example_input is None:
            self.example_input = example  # the probe pass of pruning uses it too
        self.graph = self._traced(example)

    def _traced(self, example_input: Any) -> ChannelGraph:
        """The graph torch.fx finds on ``example_input``; one warning names the layers whose
        channels it could not follow (they keep all of them), and an untraceable model
        keeps every channel."""
        try:
            graph = trace_channel_graph(self.model, example_input)
        except ValueError as err:
            warnings.warn(f"{err}. Every layer keeps its channels: zero-bit ones are stored "
                          "as headers, not removed.", stacklevel=3)
            return ChannelGraph()
        if graph.untraced:
            warnings.warn(f"tracing {type(self.model).__name__} could not follow the channels "
                          f"of {', '.join(graph.untraced)}: those layers keep every channel "
                          "(declare channel_graph() or pass graph= to remove them)",
                          stacklevel=3)
        return graph

    @property
    def graph_pending(self) -> bool:
        """Whether the graph waits for the first forward pass to be traced."""
        return self._first_forward is not None

    # ---- access -------------------------------------------------------------------------

    def _module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def _quantizer(self, name: str) -> ChannelQuantizer:
        return self._module(name).parametrizations.weight[0]

    @property
    def quantizers(self) -> dict[str, ChannelQuantizer]:
        """Module name -> its ChannelQuantizer."""
        return {n: self._quantizer(n) for n in self.names}

    def bit_depths(self) -> dict[str, nn.Parameter]:
        """Module name -> live bit-depth Parameter (edit under ``torch.no_grad()``)."""
        return {n: q.bit_depth for n, q in self.quantizers.items()}

    def exponents(self) -> dict[str, nn.Parameter]:
        """Module name -> live exponent Parameter."""
        return {n: q.exponent for n, q in self.quantizers.items()}

    def quantized_weights(self) -> dict[str, Tensor]:
        """Module name -> the weight exactly as the forward pass uses it."""
        return {n: self._module(n).weight for n in self.names}

    def raw_weights(self) -> dict[str, Tensor]:
        """Module name -> the stored (unquantized) weight Parameter the quantizer reads."""
        return {n: raw_weight(self._module(n)) for n in self.names}

    # ---- which rows and columns pruning would remove ------------------------------------

    @torch.no_grad()
    def _dead(self, name: str) -> Tensor:
        """Rows with ``b <= 0`` (exact zeros) of quantised module ``name``."""
        return self._quantizer(name).bit_depth <= 0

    def _linked(self, link: ChannelDependency) -> bool:
        """Whether every producer of ``link`` is quantized (else nothing of it is removed)."""
        return all(p in self.names for p in link.producers)

    def _dead_in_all(self, link: ChannelDependency) -> Tensor:
        """Channels of a ChannelDependency that are zero-bit in every producer of it."""
        dead = self._dead(link.producer)
        for other in link.coupled:
            dead = dead & self._dead(other)
        return dead

    def removal_plan(self) -> list[Cut]:
        """What pruning would remove now: the cuts of :func:`sgsc.structure.plan.plan_removal`
        for the zero-bit rows of every quantized layer (the one plan size counting and
        pruning share)."""
        return plan_removal({n: self._dead(n) for n in self.names}, self.graph)

    def _removed(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(dim-0 entries, dim-1 input columns) that pruning removes, per module."""
        cuts = self.removal_plan()
        in_columns = {c: raw_weight(self._module(c)).shape[1] for cut in cuts
                      for c in cut.consumers}
        return removed_rows(cuts), removed_columns(cuts, in_columns)

    def _stored_inputs(self, name: str, removed_cols: dict[str, Tensor]) -> int:
        """Weights per row of ``name`` left after pruning its input columns."""
        weight = raw_weight(self._module(name))
        # kernel size (1 for Linear / Embedding); from the shape, since a layer whose
        # every channel was cut has no row to look at
        per_col = math.prod(weight.shape[2:])
        cols = removed_cols.get(name)
        live_cols = weight.shape[1] if cols is None else int((~cols).sum())
        return live_cols * per_col

    # ---- sizes --------------------------------------------------------------------------

    def size_loss(self) -> Tensor:
        """Q: differentiable average bits per weight, over the ORIGINAL weight count.

        ``sum_layers sum_c clamp(b_c, 0, 24) * live_inputs_per_row / total_weights``, where
        ``live_inputs_per_row`` leaves out input columns fed by zero-bit producer channels
        and columns of dead heads (the columns :meth:`storage_bits` does not store).  That
        count is a constant (no gradient): the gradient on ``b_c`` is the number of
        weights the channel currently pays for.
        """
        if not self.names:
            return torch.zeros(())
        removed_cols = self._removed()[1]
        total = 0.0
        for name in self.names:
            b = effective_bits(self._quantizer(name).bit_depth)
            total = total + b.sum() * self._stored_inputs(name, removed_cols)
        return total / self.total_weights

    def rate_loss(self) -> Tensor:
        """An estimate of the entropy-coded file, in bits per ORIGINAL weight (the unit of
        :meth:`size_loss`): per stored row its header (``HEADER_BITS``, fading in over the
        first bit of depth so that a row's last bit can still be given up) plus, per stored
        input, ``min(H, b)`` bits -- ``H = log2(1 + 2e·mean|code|)``, within 0.16 bits of the
        entropy of a discretized Laplace with the row's mean absolute code (what the file's
        per-row Laplace model spends), and never more than packing's ``b``.

        Differentiable in the weights and exponents (through the codes' magnitude, with the
        straight-through rounding of :func:`~sgsc.core.quant.quantize`) and in the bit
        depths; ``sc-rate`` trains with it in place of ``Q``.
        """
        if not self.names:
            return torch.zeros(())
        removed_cols = self._removed()[1]
        total = 0.0
        for name in self.names:
            quantizer = self._quantizer(name)
            b = effective_bits(quantizer.bit_depth)
            weight = self._module(name).weight  # quantized: exp2(e) * codes
            codes = weight * torch.exp2(-quantizer.exponent).view(-1, *([1] * (weight.dim()
                                                                             - 1)))
            spread = codes.abs().flatten(1).mean(1) if codes.shape[0] else b
            per_input = torch.minimum(torch.log2(1 + 2 * math.e * spread), b)
            inputs = self._stored_inputs(name, removed_cols)
            total = total + (per_input * inputs + HEADER_BITS * b.clamp(max=1)).sum()
        return total / self.total_weights

    @torch.no_grad()
    def storage_bits(self) -> int:
        """Exact size in bits of what the export writes for the model as it is now, with
        every row at its learned bit depth and empty rows kept (``trim_bit_depths=False,
        drop_empty_rows=False``: how a run's file is written, ``harness.RUN_ENCODING``);
        the export's defaults write no more than this.

        The rule (export must match it, and pruning must not change it):

        1. Quantised weights, per row that is STORED: ``HEADER_BITS`` = 37 (5-bit bit
           depth + float32 exponent) plus ``ceil(clamp(b, 0, 24))`` bits per stored input.
           Stored input elements exclude columns that pruning removes (inputs fed by
           zero-bit producer channels of a ChannelDependency, columns of dead heads).
        2. Rows that pruning removes are not stored at all: zero-bit producer rows of a
           ChannelDependency (but when ALL of a producer's rows are zero-bit, its first
           row stays, as pruning keeps it), and the q/k/v rows of a head whose q, k and v
           rows are all zero-bit.  Other zero-bit rows (e.g. classifier rows, q rows of a
           live head) are stored as a 37-bit header with no codes.
        3. Every other ``state_dict`` tensor (biases, BatchNorm weight/bias/running stats/
           num_batches_tracked, LayerNorm, unquantised weights and embeddings) costs
           ``element_size * 8`` bits per element it keeps after pruning: entries of removed
           rows (a producer's bias, its followers' per-channel entries, q/k/v biases of
           dead heads) and removed input columns (of an unquantised consumer) are dropped.
        4. The bit depths and exponents themselves are counted only as the headers of 1.

        Not foreseen: pruning creates a bias for a bias-less consumer when removed channels
        feed it a non-zero constant; keep such constants at 0 (``dead_bias_l1``) or give
        consumers a bias (all models in :mod:`sgsc.experiments.models` do, or feed them zeros).
        """
        if self.graph.exact_only:  # what pruning keeps depends on a probe: prune a copy
            pruned = copy.deepcopy(self)
            pruned.prune()
            return pruned._bits({}, {})
        return self._bits(*self._removed())

    def _bits(self, rows: dict[str, Tensor], cols: dict[str, Tensor]) -> int:
        """The size rule of :meth:`storage_bits` with these rows and columns removed."""
        bits = 0
        for name in self.names:
            quantizer = self._quantizer(name)
            b = torch.ceil(effective_bits(quantizer.bit_depth)).long()
            stored = ~rows[name] if name in rows else torch.ones_like(b, dtype=torch.bool)
            bits += HEADER_BITS * int(stored.sum())
            bits += int(b[stored].sum()) * self._stored_inputs(name, cols)
        skip = tuple(f"{n}.parametrizations.weight." if n else "parametrizations.weight."
                     for n in self.names)
        for key, tensor in self.model.state_dict().items():
            if key.startswith(skip):
                continue
            module = key.rpartition(".")[0]
            bits += _kept_numel(tensor, rows.get(module), cols.get(module)) * (
                tensor.element_size() * 8
            )
        return bits

    def storage_bytes(self) -> int:
        """``ceil(storage_bits / 8)``."""
        return math.ceil(self.storage_bits() / 8)

    @torch.no_grad()
    def live_weights(self) -> int:
        """Quantised weights that cost bits: stored inputs of rows with ``ceil(b) > 0``."""
        cols = self._removed()[1]
        return sum(
            int((self._quantizer(n).bit_depth > 0).sum()) * self._stored_inputs(n, cols)
            for n in self.names
        )

    @torch.no_grad()
    def live_channels(self) -> int:
        """Quantised rows with ``b > 0``."""
        return sum(int((self._quantizer(n).bit_depth > 0).sum()) for n in self.names)

    def removed_fraction(self) -> float:
        """Fraction of the original quantised weights that no longer cost bits."""
        return _removed(self.live_weights(), self.total_weights)

    def size_report(self) -> dict[str, float | int]:
        """Every size number in one dict (for logs and result tables)."""
        bits = self.storage_bits()
        live = self.live_weights()
        return {
            "Q": float(self.size_loss().detach()),
            "storage_bits": bits,
            "storage_bytes": math.ceil(bits / 8),
            "live_weights": live,
            "total_weights": self.total_weights,
            "live_channels": self.live_channels(),
            "total_channels": self.total_channels,
            "removed_fraction": _removed(live, self.total_weights),
        }

    # ---- training helpers ---------------------------------------------------------------

    def param_groups(
        self,
        lr_quant: float = 0.5,
        eps_quant: float = 1e-3,
        lr_weights: float = 1e-3,
        eps_weights: float = 1e-5,
        weight_decay: float = 0.0,
    ) -> list[dict[str, Any]]:
        """Parameter groups for ``torch.optim.Adam``/``AdamW``; each parameter in one group.

        ``"quant"``: all bit depths and exponents (SCNN's large lr; the big eps keeps
        tiny, noisy gradients from moving them at full lr).  ``"weights"``: every
        parameter with 2+ dims (quantised originals, other matrices, embeddings), with
        ``weight_decay``.  ``"other"``: biases and norm parameters, no weight decay.
        Empty groups are left out.
        """
        quant = [p for q in self.quantizers.values() for p in (q.bit_depth, q.exponent)]
        seen = {id(p) for p in quant}
        weights, other = [], []
        for p in self.model.parameters():
            if id(p) not in seen:
                (weights if p.dim() >= 2 else other).append(p)
        groups = [
            {"name": "quant", "params": quant, "lr": lr_quant, "eps": eps_quant,
             "weight_decay": 0.0},
            {"name": "weights", "params": weights, "lr": lr_weights, "eps": eps_weights,
             "weight_decay": weight_decay},
            {"name": "other", "params": other, "lr": lr_weights, "eps": eps_weights,
             "weight_decay": 0.0},
        ]
        return [g for g in groups if g["params"]]

    def dead_bias_l1(self) -> Tensor:
        """Sum of ``|bias|`` over zero-bit channels (differentiable).

        A zero-bit channel still outputs its bias; pushing that to 0 makes removing the
        channel exact.  Counts the quantised module's own bias and, for producers of a
        ChannelDependency, the bias (BatchNorm beta) of its followers.
        """
        pairs = [(n, self._dead(n)) for n in self.names]
        for link in self.graph.channels:
            if self._linked(link):
                pairs += [(f, self._dead_in_all(link)) for f in link.followers]
        terms = []
        for name, dead in pairs:
            bias = getattr(self._module(name), "bias", None)
            if isinstance(bias, Tensor):
                terms.append(bias[dead].abs().sum())
        return torch.stack(terms).sum() if terms else torch.zeros(())

    # ---- pruning ------------------------------------------------------------------------

    def prune(
        self, example_input: Any = None, optimizer: torch.optim.Optimizer | None = None,
        dead_rows: dict[str, Tensor] | None = None,
    ) -> PruneResult:
        """Remove zero-bit channels in place (``sgsc.structure.prune.prune_channels``).

        If ``optimizer`` is given, its parameters are swapped for the pruned ones and their
        per-element state (Adam's ``exp_avg``, ``exp_avg_sq``, ...) is sliced with
        ``PruneResult.kept`` so training continues where it was.  ``dead_rows`` (module
        name -> bool mask, a subset of the zero-bit rows) limits what is removed; by
        default every zero-bit row goes.  Returns the PruneResult.
        """
        if example_input is None:
            example_input = self.example_input
        if example_input is None:
            if not hasattr(self.model, "example_input"):
                raise ValueError(f"pruning {type(self.model).__name__} needs one input batch "
                                 "for its probe pass: SelfCompression(model, example_input=x) "
                                 "or prune(x)")
            example_input = self.model.example_input()
        before = dict(self.model.named_parameters())
        zero = {n: self._dead(n) for n in self.names}
        if dead_rows is not None:
            unknown = sorted(set(dead_rows) - set(zero))
            if unknown:
                raise ValueError(f"dead_rows names layers that are not quantized: {unknown}")
            alive = [n for n, m in dead_rows.items() if (m.to(zero[n].device) & ~zero[n]).any()]
            if alive:
                raise ValueError(f"dead_rows marks channels with bits left in {alive}; only "
                                 "zero-bit channels can be removed exactly")
            zero = {n: dead_rows.get(n, torch.zeros_like(m)) for n, m in zero.items()}
        result = prune_channels(self.model, zero, self.graph, example_input)
        if optimizer is not None:
            _remap_optimizer(optimizer, before, self.model, result)
        return result

    def kept_rows(self, result: PruneResult, name: str) -> Tensor | None:
        """The rows of quantized layer ``name`` that a prune kept (None: all of them), to cut
        per-channel state held elsewhere (snapshots of bit depths) the same way."""
        kept = result.kept.get(f"{name}.parametrizations.weight.original", {})
        return kept.get(0)


EXAMPLE_ROWS = 8  # rows of the first input kept for tracing and pruning's probe pass


def _first_rows(args: tuple) -> Any:
    """The first :data:`EXAMPLE_ROWS` rows of every tensor of a forward's positional
    arguments (detached); one argument comes back alone, several as a tuple."""
    rows = tuple(a[:EXAMPLE_ROWS].detach() if isinstance(a, Tensor) and a.dim() else a
                 for a in args)
    return rows[0] if len(rows) == 1 else rows


def _removed(live: int, total: int) -> float:
    return 1.0 - live / total if total else 0.0


def _kept_numel(tensor: Tensor, rows: Tensor | None, cols: Tensor | None) -> int:
    """Elements of ``tensor`` left after dropping removed dim-0 rows and dim-1 columns."""
    shape = list(tensor.shape)
    if rows is not None and tensor.dim() >= 1 and shape[0] == rows.numel():
        shape[0] = int((~rows).sum())
    if cols is not None and tensor.dim() >= 2 and shape[1] == cols.numel():
        shape[1] = int((~cols).sum())
    return math.prod(shape)


def _remap_optimizer(
    optimizer: torch.optim.Optimizer,
    before: dict[str, nn.Parameter],
    model: nn.Module,
    result: PruneResult,
) -> None:
    """Point ``optimizer`` at the pruned parameters and cut their state like the parameters.

    State entries shaped like the old parameter (Adam's ``exp_avg``, ``exp_avg_sq``,
    ``max_exp_avg_sq``) are cut with ``result.select``; scalars such as ``step`` are kept.
    Biases that pruning created join the group named "other" (else the last group).
    """
    after = dict(model.named_parameters())
    name_of = {id(p): n for n, p in before.items()}
    for group in optimizer.param_groups:
        new_params = []
        for old in group["params"]:
            name = name_of.get(id(old))
            new = after.get(name, old) if name is not None else old
            state = optimizer.state.pop(old, None)
            if state is not None:
                optimizer.state[new] = {
                    k: result.select(name, v) if _shaped_like(v, old) else v
                    for k, v in state.items()
                }
            new_params.append(new)
        group["params"] = new_params
    created = [after[n] for n in result.new_parameters if n in after]
    if created:
        groups = [g for g in optimizer.param_groups if g.get("name") == "other"]
        (groups or optimizer.param_groups)[-1]["params"].extend(created)


def _shaped_like(value: Any, param: Tensor) -> bool:
    return isinstance(value, Tensor) and value.dim() > 0 and value.shape == param.shape
