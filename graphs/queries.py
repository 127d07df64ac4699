"""Questions asked of a stored circuit graph: pure networkx, so the API answers them without torch.

Every function takes the edge graph as built by ``build_edge_circuit`` (a MultiDiGraph whose
edges carry ``name``, ``score`` and ``in_circuit``) and returns plain JSON-able values. The
edge-level ones (top edges, neighbourhoods, subgraphs, comparisons, GraphML) also take an
attribution graph (a DiGraph; its edges have no key and no name).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any, TypeGuard, TypeVar

import networkx as nx

_G = TypeVar("_G", bound="nx.DiGraph[str]")


def edge_record(u: str, v: str, key: Any, data: dict[str, Any]) -> dict[str, Any]:
    """One edge as JSON: its ends, key, canonical name, score and membership."""
    return {"source": u, "target": v, "key": key, **data}


def _is_multi(graph: nx.DiGraph[str]) -> TypeGuard[nx.MultiDiGraph[str]]:
    return graph.is_multigraph()


def _edges(graph: nx.DiGraph[str]) -> Iterator[tuple[str, str, Any, dict[str, Any]]]:
    """``(u, v, key, data)`` of every edge; the key is None in a graph that is not a multigraph."""
    if _is_multi(graph):
        yield from graph.edges(keys=True, data=True)
    else:
        for u, v, d in graph.edges(data=True):
            yield u, v, None, d


def _add_edge(out: nx.DiGraph[str], u: str, v: str, key: Any, data: dict[str, Any]) -> None:
    if out.is_multigraph():
        out.add_edge(u, v, key=key, **data)
    else:
        out.add_edge(u, v, **data)


def _edges_where(graph: _G, keep: Callable[[dict[str, Any]], Any]) -> _G:
    """The edges for which ``keep(data)`` holds and the nodes they touch, in a graph of the same kind."""
    out = graph.__class__(**graph.graph)
    for u, v, k, d in _edges(graph):
        if keep(d):
            for n in (u, v):
                if n not in out:
                    out.add_node(n, **graph.nodes[n])
            _add_edge(out, u, v, k, d)
    return out


def circuit_only(graph: _G) -> _G:
    """The circuit: edges marked ``in_circuit`` (all edges when unmarked) and the nodes they touch."""
    return _edges_where(graph, lambda d: d.get("in_circuit", True))


def top_edges(graph: nx.DiGraph[str], n: int = 20) -> list[dict[str, Any]]:
    """The ``n`` edges of largest |score|, strongest first (ties by name, so the order is stable)."""
    ranked = sorted(_edges(graph), key=lambda e: (-abs(e[3].get("score", 0.0) or 0.0), e[3].get("name", "")))
    return [edge_record(*e) for e in ranked[:n]]


def neighbourhood(graph: nx.DiGraph[str], node: str) -> dict[str, Any]:
    """A node's attributes and its incoming and outgoing edges, each by |score|; KeyError if absent."""
    if node not in graph:
        raise KeyError(node)

    def by_score(edges: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(edges, key=lambda e: -abs(e.get("score", 0.0) or 0.0))

    incoming = [edge_record(u, v, k, d) for u, v, k, d in _edges(graph) if v == node]
    outgoing = [edge_record(u, v, k, d) for u, v, k, d in _edges(graph) if u == node]
    return {
        "node": {"id": node, **graph.nodes[node]},
        "in": by_score(incoming),
        "out": by_score(outgoing),
        "predecessors": sorted(set(graph.predecessors(node))),
        "successors": sorted(set(graph.successors(node))),
    }


def _hop_strength(graph: nx.DiGraph[str], u: str, v: str) -> float:
    parallel: Iterable[dict[str, Any]] = (
        graph.get_edge_data(u, v).values() if _is_multi(graph) else [graph.get_edge_data(u, v)]
    )
    return max(abs(d.get("score", 0.0) or 0.0) for d in parallel)


def paths_through(
    graph: nx.DiGraph[str], node: str, source: str = "input", target: str = "logits", limit: int = 100
) -> dict[str, Any]:
    """Paths ``source -> ... -> node -> ... -> target`` (at most ``limit``), each with its weakest hop.

    A node's parallel q/k/v edges count as one hop (the strongest of them). The circuit is a
    DAG, so the paths are finite, but their number can grow fast: ``truncated`` says so.
    """
    if node not in graph:
        raise KeyError(node)
    for end in (source, target):
        if end not in graph:
            return {"node": node, "paths": [], "truncated": False}
    simple: nx.DiGraph[str] = nx.DiGraph(graph)

    def between(a: str, b: str) -> Iterator[list[str]]:
        if a == b:
            yield [a]
            return
        yield from nx.all_simple_paths(simple, a, b)

    def joined() -> Iterator[list[str]]:
        tails: list[list[str]] | None = None
        for head in between(source, node):
            if tails is None:
                tails = list(islice(between(node, target), limit + 1))
            for tail in tails:
                yield head + tail[1:]

    found = list(islice(joined(), limit + 1))
    paths: list[dict[str, Any]] = []
    for p in found[:limit]:
        hops = [_hop_strength(graph, a, b) for a, b in zip(p, p[1:], strict=False)]
        paths.append({"nodes": p, "min_abs_score": min(hops) if hops else None})
    paths.sort(key=lambda p: -(p["min_abs_score"] or 0.0))
    return {"node": node, "paths": paths, "truncated": len(found) > limit}


def subgraph_above(graph: _G, min_abs_score: float) -> _G:
    """The edges with |score| >= ``min_abs_score`` and the nodes they touch."""
    return _edges_where(graph, lambda d: abs(d.get("score", 0.0) or 0.0) >= min_abs_score)


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def compare(a: nx.DiGraph[str], b: nx.DiGraph[str]) -> dict[str, Any]:
    """Edges (by canonical name) and nodes shared by two circuits, those only in each, and Jaccard."""
    ea = {d.get("name") or f"{u}->{v}<{k}>" for u, v, k, d in _edges(a)}
    eb = {d.get("name") or f"{u}->{v}<{k}>" for u, v, k, d in _edges(b)}
    na, nb = set(a.nodes), set(b.nodes)
    return {
        "edges": {
            "shared": sorted(ea & eb), "only_a": sorted(ea - eb), "only_b": sorted(eb - ea),
            "n_a": len(ea), "n_b": len(eb), "jaccard": _jaccard(ea, eb),
        },
        "nodes": {
            "shared": sorted(na & nb), "only_a": sorted(na - nb), "only_b": sorted(nb - na),
            "n_a": len(na), "n_b": len(nb), "jaccard": _jaccard(na, nb),
        },
    }


def _graphml_value(value: Any) -> Any:
    """GraphML holds scalars only: nested values become JSON text, None is left out."""
    if isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, sort_keys=True)


def to_graphml(graph: nx.DiGraph[str]) -> str:
    """The graph as GraphML text, for tools such as Gephi, Cytoscape or yEd."""
    out = graph.__class__()
    out.graph.update({k: _graphml_value(v) for k, v in graph.graph.items() if v is not None})
    for n, d in graph.nodes(data=True):
        out.add_node(n, **{k: _graphml_value(v) for k, v in d.items() if v is not None})
    for u, v, k, d in _edges(graph):
        _add_edge(out, u, v, None if k is None else str(k),
                  {a: _graphml_value(x) for a, x in d.items() if x is not None})
    return "\n".join(nx.generate_graphml(out))
