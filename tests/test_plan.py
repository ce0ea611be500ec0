"""The removal plan: what zero-bit rows free, stated once for size counting and pruning."""

from __future__ import annotations

import pytest
import torch

from sgsc.core.compress import SelfCompression
from sgsc.experiments.models import build_model
from sgsc.structure.graph import ChannelDependency, ChannelGraph, HeadDependency
from sgsc.structure.plan import check_graph, plan_removal, removed_columns, removed_rows


def _mask(*bits):
    return torch.tensor(bits, dtype=torch.bool)


def test_a_channel_goes_only_when_dead_in_every_coupled_producer():
    graph = ChannelGraph(channels=(ChannelDependency("a", ("c",), followers=("bn",),
                                                     coupled=("b",)),))
    [cut] = plan_removal({"a": _mask(1, 1, 0, 1), "b": _mask(1, 0, 0, 1)}, graph)
    assert cut.removed.tolist() == [True, False, False, True]
    assert cut.rows == ("a", "b") and cut.kept_index.tolist() == [1, 2]
    rows = removed_rows([cut])
    assert set(rows) == {"a", "b", "bn"}
    # a Linear after a flatten reads 3 columns per channel
    assert removed_columns([cut], {"c": 12})["c"].tolist() == [True] * 3 + [False] * 6 + [True] * 3


def test_one_channel_stays_when_all_are_dead_and_nothing_dead_plans_nothing():
    graph = ChannelGraph(channels=(ChannelDependency("a", ("c",)),))
    [cut] = plan_removal({"a": _mask(1, 1, 1)}, graph)
    assert cut.removed.tolist() == [False, True, True]  # torch has no zero-channel conv
    assert plan_removal({"a": _mask(0, 0, 0)}, graph) == []
    assert plan_removal({}, graph) == []  # a producer without bit depths keeps everything


def test_a_head_goes_when_its_query_key_and_value_rows_are_all_dead():
    graph = ChannelGraph(heads=(HeadDependency("q", "k", "v", "proj", head_size=2),))
    q, k, v = _mask(1, 1, 1, 1), _mask(1, 1, 0, 1), _mask(1, 1, 1, 1)
    [cut] = plan_removal({"q": q, "k": k, "v": v}, graph)
    assert cut.removed.tolist() == [True, True, False, False] and cut.head_size == 2
    assert set(removed_rows([cut])) == {"q", "k", "v"}
    assert removed_columns([cut], {"proj": 4})["proj"].tolist() == [True, True, False, False]


def test_bad_graphs_are_named():
    with pytest.raises(ValueError, match="cannot be split"):
        [cut] = plan_removal({"a": _mask(1, 0, 0)}, ChannelGraph(
            channels=(ChannelDependency("a", ("c",)),)))
        removed_columns([cut], {"c": 4})
    with pytest.raises(ValueError, match="as producer more than once"):
        check_graph(ChannelGraph(channels=(ChannelDependency("a", ("b",)),
                                           ChannelDependency("a", ("c",)))))
    with pytest.raises(ValueError, match="must agree"):
        plan_removal({"a": _mask(1, 0), "b": _mask(1, 0, 0)}, ChannelGraph(
            channels=(ChannelDependency("a", ("c",), coupled=("b",)),)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruning_removes_exactly_what_the_plan_counts(seed):
    """The one plan: the rows and columns the size counts as gone are the ones pruning cuts."""
    model = build_model("mnist_cnn").eval()
    sc = SelfCompression(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for q in sc.quantizers.values():
            q.bit_depth[torch.rand(q.bit_depth.shape, generator=generator) < 0.4] = 0.0
    shapes = {n: tuple(w.shape) for n, w in sc.raw_weights().items()}
    cuts = sc.removal_plan()
    in_columns = {c: shapes[c][1] for cut in cuts for c in cut.consumers}
    rows, cols = removed_rows(cuts), removed_columns(cuts, in_columns)
    bits = sc.storage_bits()
    sc.prune()
    for name, weight in sc.raw_weights().items():
        expected = (shapes[name][0] - int(rows[name].sum()) if name in rows else shapes[name][0],
                    shapes[name][1] - int(cols[name].sum()) if name in cols else shapes[name][1])
        assert tuple(weight.shape[:2]) == expected, name
    assert sc.storage_bits() == bits
