"""Paths into a logit on a hand-built graph whose shares are worked out by hand."""

from __future__ import annotations

import networkx as nx
import pytest

from graphs.attribution_queries import paths_to_logit


def _graph() -> nx.DiGraph:
    g = nx.DiGraph()
    for node, kind in (("t1", "token"), ("t2", "token"), ("f1", "feature"), ("L", "logit")):
        g.add_node(node, kind=kind)
    g.add_edge("t1", "f1", weight=3.0)
    g.add_edge("t2", "f1", weight=1.0)
    g.add_edge("f1", "L", weight=2.0)
    g.add_edge("t1", "L", weight=-2.0)
    return g


def test_shares_by_hand_best_first_and_summing_to_one():
    # into L: |2| and |-2| -> 1/2 each; into f1: 3/4 from t1, 1/4 from t2
    out = paths_to_logit(_graph(), "L", limit=10)
    got = [(p["nodes"], p["share"]) for p in out["paths"]]
    assert got == [
        (["t1", "L"], pytest.approx(0.5)),
        (["t1", "f1", "L"], pytest.approx(0.375)),
        (["t2", "f1", "L"], pytest.approx(0.125)),
    ]
    assert sum(s for _, s in got) == pytest.approx(1.0) and not out["truncated"]
    two = paths_to_logit(_graph(), "L", limit=2)
    assert [p["nodes"] for p in two["paths"]] == [["t1", "L"], ["t1", "f1", "L"]] and not two["truncated"]
    cut = paths_to_logit(_graph(), "L", limit=10, max_expansions=2)
    assert cut["truncated"] and len(cut["paths"]) < 3
    with pytest.raises(KeyError):
        paths_to_logit(_graph(), "f1")
