"""Paths through a node are enumerated within a budget: a DAG with exponentially many paths is
cut, and a node off every input-to-logits path answers at once instead of searching."""

from __future__ import annotations

import time

import networkx as nx
import pytest

from graphs.queries import paths_through


def _diamonds(k: int) -> nx.MultiDiGraph:
    """input -> (u_i | d_i) -> j_i -> ... -> logits: 2**k paths; a dead end ``sink`` hangs off the
    last junction (it reaches nothing), and ``orphan`` feeds logits but nothing reaches it."""
    g: nx.MultiDiGraph = nx.MultiDiGraph()
    prev = "input"
    for i in range(k):
        for side, score in (("u", 1.0 + i), ("d", -0.5)):
            g.add_edge(prev, f"{side}{i}", key=0, score=score)
            g.add_edge(f"{side}{i}", f"j{i}", key=0, score=score)
        prev = f"j{i}"
    g.add_edge(prev, "logits", key=0, score=2.0)
    g.add_edge(prev, "sink", key=0, score=3.0)
    g.add_edge("orphan", "logits", key=0, score=3.0)
    return g


def test_small_graph_every_path_ranked_by_weakest_hop() -> None:
    out = paths_through(_diamonds(2), "j0", limit=10)
    got = [(p["nodes"], p["min_abs_score"]) for p in out["paths"]]
    assert got == [
        (["input", "u0", "j0", "u1", "j1", "logits"], 1.0),
        (["input", "u0", "j0", "d1", "j1", "logits"], 0.5),
        (["input", "d0", "j0", "u1", "j1", "logits"], 0.5),
        (["input", "d0", "j0", "d1", "j1", "logits"], 0.5),
    ]
    assert out["truncated"] is False and out["reachable"] is True and out["candidates"] == 4
    two = paths_through(_diamonds(2), "j0", limit=2)
    assert len(two["paths"]) == 2 and two["truncated"] is True and two["candidates"] == 4


def test_exponentially_many_paths_are_cut_by_the_budget() -> None:
    g = _diamonds(60)  # 2**60 paths through j30: enumerating them all would never end
    t0 = time.perf_counter()
    out = paths_through(g, "j30", limit=25, max_candidates=2000)
    assert time.perf_counter() - t0 < 2.0
    assert out["truncated"] is True and out["candidates"] == 2000 and len(out["paths"]) == 25
    scores = [p["min_abs_score"] for p in out["paths"]]
    assert scores == [1.0] + [0.5] * 24  # the all-"u" path is the strongest; ranked first
    assert all(p["nodes"][0] == "input" and p["nodes"][-1] == "logits" and "j30" in p["nodes"]
               for p in out["paths"])


@pytest.mark.parametrize("node", ["sink", "orphan"])
def test_a_node_off_every_path_answers_at_once(node: str) -> None:
    g = _diamonds(60)  # 2**60 paths from input to sink: the old search walked every one
    t0 = time.perf_counter()
    out = paths_through(g, node, limit=10, max_candidates=10_000)
    assert time.perf_counter() - t0 < 1.0
    assert out == {"node": node, "paths": [], "truncated": False, "reachable": False, "candidates": 0}


def test_unknown_node_is_a_key_error_and_missing_ends_mean_no_paths() -> None:
    with pytest.raises(KeyError):
        paths_through(_diamonds(2), "nope")
    g = _diamonds(2)
    g.remove_node("logits")
    assert paths_through(g, "j0")["reachable"] is False
