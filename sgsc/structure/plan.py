"""The removal plan: which rows, follower entries and input columns zero-bit rows free.

Size counting (:meth:`sgsc.core.compress.SelfCompression.storage_bits`, the size term) and
pruning (:func:`sgsc.structure.prune.prune_channels`) both need this one fact, so it is
computed here, once, from a :class:`~sgsc.structure.graph.ChannelGraph` and a mask of dead
rows per layer:

* a :class:`~sgsc.structure.graph.ChannelDependency` loses the channels that are dead in
  *every* producer of it (coupled producers go together) -- except that one channel stays
  when all are dead, because torch has no zero-channel convolution;
* a :class:`~sgsc.structure.graph.HeadDependency` loses the heads whose query, key and
  value rows are all dead.

A :class:`Cut` names the removed units (channels, or columns of an attention output
projection) and where they live: rows of its producers, entries of its followers, input
columns of its consumers.  A layer without a mask (not quantized) keeps every channel it
touches.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from sgsc.structure.graph import ChannelGraph


@dataclass(frozen=True)
class Cut:
    """One group of units removed together.

    ``rows``: the layers whose output rows are the units (a link's producers; an attention
    block's q, k and v); ``followers``: per-channel layers on the way (BatchNorm);
    ``consumers``: the layers that read the units as inputs (dim 1 of a Conv weight; for a
    Linear after a flatten, ``in_features // units`` columns per unit).  ``removed`` is a
    bool mask over the units; ``head_size`` is non-zero for attention heads.
    """

    source: str
    rows: tuple[str, ...]
    followers: tuple[str, ...]
    consumers: tuple[str, ...]
    removed: Tensor
    head_size: int = 0

    @property
    def n_units(self) -> int:
        return self.removed.numel()

    @property
    def removed_index(self) -> Tensor:
        return self.removed.nonzero().flatten()

    @property
    def kept_index(self) -> Tensor:
        return (~self.removed).nonzero().flatten()

    def columns(self, consumer: str, in_columns: int) -> Tensor:
        """The removed input columns of ``consumer``, which has ``in_columns`` of them."""
        if in_columns % self.n_units or in_columns < self.n_units:
            raise ValueError(f"{consumer} has {in_columns} input columns, which cannot be "
                             f"split over the {self.n_units} channels of {self.source}")
        return self.removed.repeat_interleave(in_columns // self.n_units)


def check_graph(graph: ChannelGraph) -> None:
    """A producer or consumer that appears twice would be cut with stale indices."""
    producers = [p for link in graph.channels for p in link.producers]
    consumers = [c for link in graph.channels for c in link.consumers]
    for kind, names in (("producer", producers), ("consumer", consumers)):
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"the channel graph lists {', '.join(repeated)} as {kind} more than "
                             "once; each layer may produce and consume one channel group only")


def plan_removal(dead: dict[str, Tensor], graph: ChannelGraph) -> list[Cut]:
    """The cuts that remove the dead units of ``graph``: ``dead`` maps a layer to a bool
    mask over its output rows (True: zero-bit).  Cuts that remove nothing are left out."""
    cuts = []
    for link in graph.channels:
        masks = [dead.get(p) for p in link.producers]
        if any(m is None for m in masks):
            continue  # a producer without bit depths: its channels all carry something
        mask = masks[0]
        for other in masks[1:]:
            if other.numel() != mask.numel():
                raise ValueError(f"the coupled producers of {link.producer} have "
                                 f"{[m.numel() for m in masks]} channels; they must agree")
            mask = mask & other
        if not mask.any():
            continue
        if mask.all():  # torch has no zero-channel conv: one stays (zero, feeding a constant)
            mask = mask.clone()
            mask[0] = False
        cuts.append(Cut(link.producer, link.producers, link.followers, link.consumers, mask))
    for block in graph.heads:
        parts = (block.queries, block.keys, block.values)
        masks = [dead.get(n) for n in parts]
        if any(m is None for m in masks):
            continue
        hs = block.head_size
        if any(m.numel() % hs for m in masks) or len({m.numel() for m in masks}) != 1:
            raise ValueError(f"q/k/v rows of {block.output} do not split into heads of {hs}")
        dead_heads = masks[0].view(-1, hs).all(1)
        for m in masks[1:]:
            dead_heads = dead_heads & m.view(-1, hs).all(1)
        if not dead_heads.any():
            continue
        cuts.append(Cut(block.output, parts, (), (block.output,),
                        dead_heads.repeat_interleave(hs), head_size=hs))
    return cuts


def removed_rows(cuts: list[Cut]) -> dict[str, Tensor]:
    """Layer -> bool mask of the dim-0 entries the cuts remove (rows and follower entries)."""
    out: dict[str, Tensor] = {}
    for cut in cuts:
        for name in (*cut.rows, *cut.followers):
            out[name] = cut.removed if name not in out else out[name] | cut.removed
    return out


def removed_columns(cuts: list[Cut], in_columns: dict[str, int]) -> dict[str, Tensor]:
    """Consumer -> bool mask of the dim-1 input columns the cuts remove; ``in_columns``
    gives each consumer's number of input columns."""
    out: dict[str, Tensor] = {}
    for cut in cuts:
        for name in cut.consumers:
            cols = cut.columns(name, in_columns[name])
            out[name] = cols if name not in out else out[name] | cols
    return out
