"""The API's caches: re-pruned attribution views kept per (job, node threshold, edge threshold)
in a bounded LRU, and forgotten with their job."""

from __future__ import annotations

import networkx as nx

from api.caches import PrunedViews
from circuitd.lru import LRU
from graphs import attribution_queries as aq
from graphs.attribution_networkx import to_networkx
from tests.graphs.test_attribution import hand_graph


def _full() -> nx.DiGraph:
    return to_networkx(hand_graph(), stored=True)


def test_views_are_cached_per_job_and_thresholds() -> None:
    full, views = _full(), PrunedViews(size=2)
    tight = views.pruned("j1", full, 0.5, 0.9)
    assert views.pruned("j1", full, 0.5, 0.9) is tight  # no second solve
    assert sorted(tight.edges) == sorted(aq.reprune(full, 0.5, 0.9).edges)
    nt, et = full.graph["node_threshold"], full.graph["edge_threshold"]
    default = views.pruned("j1", full)
    assert views.pruned("j1", full, nt, et) is default  # both spellings of the stored thresholds
    assert views.pruned("j2", full, 0.5, 0.9) is not tight  # another job
    assert len(views.graphs) == 2  # bounded: the least recently used (tight) went
    assert views.pruned("j1", full, 0.5, 0.9) is not tight
    views.forget("j1")
    assert len(views.graphs) == 1 and views.graphs.get(("j2", 0.5, 0.9)) is not None
    views.neuronpedia.put(("j2", 0.5, 0.9), b"{}")
    views.forget("j2")
    assert len(views.graphs) == len(views.neuronpedia) == 0


def test_lru_keeps_the_most_recently_used() -> None:
    lru: LRU[str, int] = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # a is now the most recent
    lru.put("c", 3)
    assert lru.get("b") is None and lru.get("a") == 1 and lru.get("c") == 3
    assert lru.get_or_make("d", lambda: 4) == 4 and lru.get("a") is None
    lru.forget(lambda k: k == "c")
    assert len(lru) == 1 and lru.get("d") == 4
