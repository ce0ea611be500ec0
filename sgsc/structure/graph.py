"""Which layers share channels: the structural facts that size counting and pruning need.

A model that wants its zero-bit channels physically removed (and counted as removed)
declares how channels flow between its layers.  Two kinds of link are enough for the
models in this package:

* :class:`ChannelDependency` -- output channel ``c`` of ``producer`` (a Conv or Linear)
  is read as input channel ``c`` by every module in ``consumers`` (dim 1 of a Conv
  weight; for a Linear that reads a flattened feature map, ``in_features // channels``
  consecutive columns per channel).  ``followers`` are per-channel modules on the way
  (BatchNorm) whose entries go with the channel.  ``coupled`` are further producers
  whose channel ``c`` is tied to it -- the other operand of a residual add, a depthwise
  convolution on the way, the gate of an ``x * gate``: a channel goes only when it is
  zero-bit in all of them, and then from all of them.
* :class:`HeadDependency` -- an attention head lives in rows
  ``[h * head_size, (h + 1) * head_size)`` of the ``queries``, ``keys`` and ``values``
  projections and in the same columns of ``output``.  A head is removable when all its
  query, key and value rows are zero.

Nothing here imports torch: a graph is plain data, so it can be written by hand, tested
and stored as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChannelDependency:
    """Output channels of ``producer`` feed the input channels of ``consumers``."""

    producer: str
    consumers: tuple[str, ...]
    followers: tuple[str, ...] = ()
    coupled: tuple[str, ...] = ()

    @property
    def producers(self) -> tuple[str, ...]:
        """Every layer that writes the channels: ``producer`` and the ``coupled`` ones."""
        return (self.producer, *self.coupled)


@dataclass(frozen=True)
class HeadDependency:
    """An attention block whose heads can be removed as units."""

    queries: str
    keys: str
    values: str
    output: str
    head_size: int


Dependency = ChannelDependency | HeadDependency


@dataclass(frozen=True)
class ChannelGraph:
    """All channel links of one model.  Empty means: every layer stands alone.

    ``exact_only``: pruning keeps (rather than refuses) a zero-bit channel whose constant
    output it cannot fold exactly -- set by :func:`sgsc.structure.trace.trace_channel_graph`,
    whose links are found, not declared; a declared graph promises foldability, and a
    broken promise is an error.  ``untraced``: what the tracer could not follow.
    """

    channels: tuple[ChannelDependency, ...] = ()
    heads: tuple[HeadDependency, ...] = ()
    exact_only: bool = False
    # Producers whose channels a tracer could not follow (they keep every channel); the
    # layers that write the model's own output are not among them: no graph removes those.
    untraced: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.channels or self.heads)

    def producer_of(self, consumer: str) -> ChannelDependency | None:
        """The link whose channels ``consumer`` reads as inputs, if any."""
        for link in self.channels:
            if consumer in link.consumers:
                return link
        return None

    def head_block_of(self, module: str) -> HeadDependency | None:
        """The attention block that ``module`` (q, k, v or output projection) belongs to."""
        for block in self.heads:
            if module in (block.queries, block.keys, block.values, block.output):
                return block
        return None
