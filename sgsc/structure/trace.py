"""Channel dependencies found by tracing a model with ``torch.fx``.

Pruning a channel needs to know who else holds it: the layer that writes it (producer),
the per-channel layers on the way (BatchNorm: followers), the layers that read it
(consumers), and the layers *coupled* to it -- a residual ``add`` or an ``x * gate``
ties channel ``c`` of both operands together, and a depthwise convolution maps its input
channel ``c`` to its output channel ``c``.  :func:`trace_channel_graph` follows every
tensor of a traced forward pass through those operations and writes the result as a
:class:`~sgsc.structure.graph.ChannelGraph` of
:class:`~sgsc.structure.graph.ChannelDependency` links (``coupled`` for the extra producers
of a group), the same data a model may declare by hand.

A channel space the tracer does not understand -- a concatenation, a reshape other than
flattening a feature map for a Linear, a norm over channels, grouped convolutions, the
model's input or output, a layer called twice -- is a *barrier*: none of its channels is
removed.  The graph is marked ``exact_only``: pruning then keeps every unit whose removal
it cannot fold exactly (a non-zero constant read by a zero-padded convolution, or a
value that is not constant), instead of refusing.  Why ``torch.fx`` and not a dependency
library: it is part of torch (nothing to install or pin), it sees every operation of the
forward pass with its shapes (``ShapeProp``), and the folding and exactness checks stay
in :mod:`sgsc.structure.prune` where the hand-declared graphs already have them; torch-pruning's
graph would still need both, and it edits ``module.weight`` in place, which a
parametrized (quantized) layer does not allow.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from sgsc.structure.graph import ChannelDependency, ChannelGraph

# Operations that act on each channel separately: a channel in is the same channel out.
CHANNELWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU,
                       nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Dropout, nn.Identity,
                       nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
                       nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
CHANNELWISE_FUNCTIONS = {F.relu, F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.gelu,
                         torch.relu, torch.sigmoid, torch.tanh, F.leaky_relu, F.dropout,
                         F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d,
                         F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, torch.flatten}
CHANNELWISE_METHODS = {"relu", "sigmoid", "tanh", "flatten", "view", "reshape", "contiguous"}
COUPLING = {operator.add, operator.mul, operator.sub, torch.add, torch.mul, torch.sub,
            "add", "mul", "sub", "add_", "mul_"}


class _Groups:
    """Union-find over channel spaces, with each space's producers, followers, consumers."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.facts: list[dict[str, Any]] = []

    def new(self, size: int | None, producer: str | None = None, barrier: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.facts.append({"size": size, "producers": [producer] if producer else [],
                           "followers": [], "consumers": [], "barrier": barrier})
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        fa, fb = self.facts[a], self.facts[b]
        self.parent[b] = a
        for key in ("producers", "followers", "consumers"):
            fa[key] += fb[key]
        fa["barrier"] = fa["barrier"] or fb["barrier"] or fa["size"] != fb["size"]
        return a

    def get(self, g: int) -> dict[str, Any]:
        return self.facts[self.find(g)]


def _channels(node: fx.Node) -> int | None:
    """The channel count of a traced tensor (dim 1), or None when it is not a tensor."""
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return int(shape[1]) if shape is not None and len(shape) >= 2 else None


def _is_flatten(node: fx.Node, source: fx.Node) -> bool:
    """A reshape that only flattens (N, C, ...) to (N, C * ...): channel-major columns."""
    out, inp = node.meta.get("tensor_meta"), source.meta.get("tensor_meta")
    if out is None or inp is None:
        return False
    return (len(out.shape) == 2 and len(inp.shape) >= 2 and out.shape[0] == inp.shape[0]
            and out.shape[1] == inp.shape[1:].numel())


def trace_channel_graph(model: nn.Module, example_input: Any) -> ChannelGraph:
    """The channel graph of ``model``, traced on ``example_input`` (see module docstring).

    Raises:
        ValueError: the model cannot be traced symbolically (data-dependent control
            flow); declare its graph by hand (``SelfCompression(..., graph=...)``).
    """
    try:
        traced = fx.symbolic_trace(model)
    except Exception as err:  # fx raises many kinds of errors for untraceable code
        raise ValueError(f"{type(model).__name__} cannot be traced with torch.fx "
                         f"({type(err).__name__}: {err}); pass a hand-declared "
                         "ChannelGraph instead") from err
    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        ShapeProp(traced).propagate(*inputs)
    model.train(was_training)
    modules = dict(traced.named_modules())
    groups = _Groups()
    of: dict[fx.Node, int] = {}  # node -> its channel group
    calls: dict[str, int] = {}

    def group_of(arg: Any) -> int | None:
        return of.get(arg) if isinstance(arg, fx.Node) else None

    def barrier(*args: Any, output: bool = False) -> None:
        for arg in args:
            g = group_of(arg)
            if g is not None:
                groups.get(g)["barrier" if not output else "output"] = True

    for node in traced.graph.nodes:
        tensors = [a for a in node.all_input_nodes if a in of]
        if node.op == "placeholder":
            of[node] = groups.new(_channels(node), barrier=True)
        elif node.op == "output":
            barrier(*node.all_input_nodes, output=True)
        elif node.op == "call_module":
            module = modules[node.target]
            calls[node.target] = calls.get(node.target, 0) + 1
            source = node.args[0] if node.args else None
            g_in = group_of(source)
            if isinstance(module, _ConvNd) and module.groups == 1 or isinstance(module,
                                                                              nn.Linear):
                if g_in is not None:
                    groups.get(g_in)["consumers"].append(node.target)
                of[node] = groups.new(_channels(node), producer=node.target)
            elif (isinstance(module, _ConvNd) and g_in is not None
                  and module.groups == module.in_channels == module.out_channels):
                groups.get(g_in)["producers"].append(node.target)  # depthwise: c -> c
                of[node] = g_in
            elif isinstance(module, _BatchNorm) and g_in is not None:
                groups.get(g_in)["followers"].append(node.target)
                of[node] = g_in
            elif g_in is not None and (isinstance(module, CHANNELWISE_MODULES) or (
                    isinstance(module, nn.Flatten) and _is_flatten(node, source))):
                of[node] = g_in
            else:
                barrier(*tensors)
                of[node] = groups.new(_channels(node), barrier=True)
        elif node.op in ("call_function", "call_method"):
            name = node.target
            source = node.args[0] if node.args else None
            if name in COUPLING:
                operands = [a for a in node.args[:2] if a in of]
                if len(operands) == 2:
                    of[node] = groups.union(of[operands[0]], of[operands[1]])
                elif len(operands) == 1:
                    of[node] = of[operands[0]]  # a scalar operand leaves channels alone
            elif name in ("size", "dim") or _channels(node) is None and not tensors:
                continue  # shapes and constants, not channels
            elif (name in CHANNELWISE_FUNCTIONS or name in CHANNELWISE_METHODS) \
                    and source in of and (_channels(node) == _channels(source)
                                          or _is_flatten(node, source)):
                of[node] = of[source]
            else:
                barrier(*tensors)
                if _channels(node) is not None:
                    of[node] = groups.new(_channels(node), barrier=True)
        elif node.op == "get_attr":
            continue
    twice = {name for name, n in calls.items() if n > 1}
    links, untraced = [], []
    seen: set[int] = set()
    for g in range(len(groups.parent)):
        root = groups.find(g)
        if root in seen:
            continue
        seen.add(root)
        facts = groups.facts[root]
        producers = list(dict.fromkeys(facts["producers"]))
        consumers = list(dict.fromkeys(facts["consumers"]))
        if facts.get("output"):
            continue  # the model's output: its channels are the answer, never removed
        if (facts["barrier"] or not consumers
                or set(producers + consumers + facts["followers"]) & twice):
            untraced += producers
            continue
        if producers:
            links.append(ChannelDependency(producers[0], tuple(consumers),
                                           tuple(dict.fromkeys(facts["followers"])),
                                           coupled=tuple(producers[1:])))
    return ChannelGraph(channels=tuple(links), exact_only=True,
                        untraced=tuple(dict.fromkeys(untraced)))
