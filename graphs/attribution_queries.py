"""Questions asked of a stored attribution graph (a full :func:`graphs.attribution_graph.to_networkx`
graph): re-pruning, the most influential features, the strongest paths into a logit. Pure
numpy and networkx, so the API answers them without torch."""

from __future__ import annotations

import heapq
from itertools import count
from typing import Any

import networkx as nx

from graphs.attribution_networkx import from_networkx, to_networkx


def is_attribution(graph: nx.Graph[str]) -> bool:
    return graph.graph.get("kind") == "attribution"


def reprune(
    full: nx.DiGraph[str], node_threshold: float | None = None, edge_threshold: float | None = None
) -> nx.DiGraph[str]:
    """The pruned graph at other thresholds (default: the stored ones) from a stored full graph.

    At the stored thresholds nothing is recomputed: the stored form already marks the pruned
    nodes and holds exactly the pruned edges as links. Other thresholds prune the stored matrix.
    """
    nt = full.graph["node_threshold"] if node_threshold is None else node_threshold
    et = full.graph["edge_threshold"] if edge_threshold is None else edge_threshold
    if (nt, et) == (full.graph["node_threshold"], full.graph["edge_threshold"]) and "adjacency" in full.graph:
        out: nx.DiGraph[str] = nx.DiGraph(**{k: v for k, v in full.graph.items() if k != "adjacency"})
        out.graph["full"] = False
        out.add_nodes_from((k, d) for k, d in full.nodes(data=True) if d["in_circuit"])
        out.add_edges_from(full.edges(data=True))
        return out
    ag = from_networkx(full)
    return to_networkx(ag, ag.prune(nt, et))


def _node(graph: nx.DiGraph[str], key: str) -> dict[str, Any]:
    d = graph.nodes[key]
    fields = ("kind", "layer", "pos", "feature", "token", "token_id", "activation", "influence", "in_circuit")
    return {"id": key, **{f: d.get(f) for f in fields}}


def top_features(graph: nx.DiGraph[str], n: int = 20) -> list[dict[str, Any]]:
    """The ``n`` feature nodes of largest influence on the logits (full graph), strongest first."""
    feats = [k for k, d in graph.nodes(data=True) if d.get("kind") == "feature"]
    feats.sort(key=lambda k: (-(graph.nodes[k].get("influence") or 0.0), graph.nodes[k].get("index", 0)))
    return [_node(graph, k) for k in feats[:n]]


def logit_nodes(graph: nx.DiGraph[str]) -> list[str]:
    return [k for k, d in graph.nodes(data=True) if d.get("kind") == "logit"]


def paths_to_logit(
    graph: nx.DiGraph[str], logit: str, limit: int = 20, max_expansions: int = 200_000
) -> dict[str, Any]:
    """The ``limit`` paths into ``logit`` that carry the largest share of its credit, best first.

    A path's share is the product of its edges' normalised weights ``|A[t, s]| / Σ_s' |A[t, s']|``
    (over the target's inputs in ``graph``), so the shares of all paths from the inputs sum to 1,
    as influence does. A path starts at a node with no incoming edge in ``graph`` (a token, an
    error, or a feature whose inputs were pruned). Best-first search backwards from the logit: a
    share can only fall as a path grows, so paths come out best first and the first ``limit`` are
    the best. ``truncated`` says the search stopped at ``max_expansions`` first. KeyError if
    ``logit`` is not a logit node of the graph.
    """
    if logit not in graph or graph.nodes[logit].get("kind") != "logit":
        raise KeyError(logit)
    total_in = {
        v: sum(abs(d.get("weight", 0.0) or 0.0) for _, _, d in graph.in_edges(v, data=True)) for v in graph
    }
    tie = count()
    heap: list[tuple[float, int, list[str]]] = [(-1.0, next(tie), [logit])]
    found: list[dict[str, Any]] = []
    expansions = 0
    while heap and len(found) < limit and expansions < max_expansions:
        neg, _, path = heapq.heappop(heap)
        head = path[0]
        preds = [p for p in graph.predecessors(head) if p not in path]
        if not preds:
            if len(path) > 1:
                found.append({"nodes": path, "share": -neg})
            continue
        for p in preds:
            expansions += 1
            weight = abs(graph.edges[p, head].get("weight", 0.0) or 0.0)
            share = -neg * weight / total_in[head] if total_in[head] > 0 else 0.0
            heapq.heappush(heap, (-share, next(tie), [p, *path]))
    return {"logit": logit, "paths": found, "truncated": bool(heap) and len(found) < limit}
