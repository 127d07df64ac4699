import dataclasses

import pytest

from circuitd.edges import EdgeGraph, count_edges
from circuitd.models.ids import RANDOM_PRESETS
from circuitd.models.registry import model_shape


@pytest.mark.parametrize("split,expected", [(True, 32491), (False, 11611)])
def test_gpt2_small_counts(split: bool, expected: int) -> None:
    graph = EdgeGraph(model_shape("random:gpt2-small"), split)
    assert graph.n_edges == expected
    assert graph.n_sources == 157
    assert len(set(graph.edge_names)) == expected


@pytest.mark.parametrize("preset", sorted(RANDOM_PRESETS))
@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("parallel", [True, False])
def test_closed_form_matches_enumeration(preset: str, split: bool, parallel: bool) -> None:
    shape = dataclasses.replace(model_shape(f"random:{preset}"), parallel_attn_mlp=parallel)
    graph = EdgeGraph(shape, split)
    assert graph.n_edges == count_edges(shape, split) == len(graph.edge_names)


def test_edge_rules_tiny() -> None:
    graph = EdgeGraph(model_shape("random:tiny"))
    names = set(graph.edge_names)
    # into heads: input, earlier heads and earlier MLPs only
    assert "input->a0.h0<q>" in names and "a0.h1->a1.h2<k>" in names and "m0->a1.h3<v>" in names
    assert "a0.h1->a0.h2<q>" not in names and "m1->a1.h0<q>" not in names
    # into MLPs: heads of the same layer too, MLPs strictly earlier
    assert "a1.h0->m1" in names and "m0->m1" in names and "m1->m1" not in names
    assert {"input->logits", "a1.h3->logits", "m1->logits"} <= names
    _, src, dst, keys = graph.edge_table
    for i, name in enumerate(graph.edge_names):
        s, d = name.split("->")
        assert graph.nodes[src[i]] == s
        assert graph.nodes[dst[i]] == d.split("<")[0]
        assert keys[i] == (d[-2] if d.endswith(">") else None)


def test_parallel_mlp_reads_no_same_layer_heads() -> None:
    shape = dataclasses.replace(model_shape("random:tiny"), parallel_attn_mlp=True)
    names = set(EdgeGraph(shape).edge_names)
    assert "a1.h0->m1" not in names and "a0.h0->m1" in names
