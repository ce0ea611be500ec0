"""Channel graphs as plain data: producers, lookups, truthiness."""

from __future__ import annotations

from sgsc.structure.graph import ChannelDependency, ChannelGraph, HeadDependency


def test_a_link_lists_all_its_producers():
    link = ChannelDependency("a", ("c",), ("bn",), coupled=("b", "dw"))
    assert link.producers == ("a", "b", "dw")
    assert ChannelDependency("a", ("c",)).producers == ("a",)


def test_lookups_and_emptiness():
    heads = HeadDependency("q", "k", "v", "proj", 8)
    graph = ChannelGraph(channels=(ChannelDependency("a", ("c",)),), heads=(heads,))
    assert graph and not ChannelGraph() and not ChannelGraph().exact_only
    assert graph.producer_of("c").producer == "a" and graph.producer_of("a") is None
    assert graph.head_block_of("proj") is heads and graph.head_block_of("c") is None
