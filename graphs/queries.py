"""Questions asked of a stored circuit graph: pure networkx, so the API answers them without torch.

Every function takes the edge graph as built by ``build_edge_circuit`` (a MultiDiGraph whose
edges carry ``name``, ``score`` and ``in_circuit``) and returns plain JSON-able values. The
edge-level ones (top edges, neighbourhoods, subgraphs, comparisons, GraphML) also take an
attribution graph (a DiGraph; its edges have no key and no name).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
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


_Edge = tuple[str, str, Any, dict[str, Any]]


def _once(edges: Iterator[_Edge]) -> Iterator[_Edge]:
    """Each edge once: an edge into a key/value head is drawn into each query head of its group
    (``kv_head``, :mod:`graphs.edge_circuit`); the first copy stands for it."""
    seen: set[str] = set()
    for e in edges:
        if "kv_head" in e[3]:
            if e[3]["name"] in seen:
                continue
            seen.add(e[3]["name"])
        yield e


def top_edges(graph: nx.DiGraph[str], n: int = 20) -> list[dict[str, Any]]:
    """The ``n`` edges of largest |score|, strongest first (ties by name, so the order is stable)."""
    ranked = sorted(
        _once(_edges(graph)), key=lambda e: (-abs(e[3].get("score", 0.0) or 0.0), e[3].get("name", ""))
    )
    return [edge_record(*e) for e in ranked[:n]]


def top_nodes(graph: nx.DiGraph[str], n: int = 20) -> list[dict[str, Any]]:
    """The ``n`` heads, MLPs or neurons of largest |score| in a node- or neuron-level circuit,
    strongest first (ties by name); each with its attributes (``score``, ``in_circuit``,
    ``kind``, ``layer``, ...)."""
    scored = [
        (node, d) for node, d in graph.nodes(data=True)
        if d.get("kind") in ("attn_head", "mlp", "neuron") and d.get("score") is not None
    ]
    ranked = sorted(scored, key=lambda nd: (-abs(nd[1]["score"]), nd[0]))
    return [{"id": node, **d} for node, d in ranked[:n]]


def top(graph: nx.DiGraph[str], n: int = 20) -> dict[str, Any]:
    """The top of a graph at its level: ``{"level": "node", "nodes": [...]}`` for a node-level
    circuit (``"neuron"`` for a neuron-level one), else ``{"level": "edge", "edges": [...]}``."""
    level = graph.graph.get("level", "edge")
    if level in ("node", "neuron"):
        return {"level": level, "nodes": top_nodes(graph, n)}
    return {"level": level, "edges": top_edges(graph, n)}


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


def _hop_strengths(graph: nx.DiGraph[str]) -> dict[tuple[str, str], float]:
    """|score| of each hop ``(u, v)``; parallel q/k/v edges count as one hop, the strongest."""
    out: dict[tuple[str, str], float] = {}
    for u, v, _, d in _edges(graph):
        out[u, v] = max(out.get((u, v), 0.0), abs(d.get("score", 0.0) or 0.0))
    return out


def _reach(graph: nx.DiGraph[str], start: str, forward: bool = True) -> set[str]:
    """``start`` and every node reachable from it (``forward``) or that reaches it."""
    step = graph.successors if forward else graph.predecessors
    seen, todo = {start}, [start]
    while todo:
        for n in step(todo.pop()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def _paths_within(graph: nx.DiGraph[str], a: str, b: str, on_path: set[str]) -> Iterator[list[str]]:
    """Paths ``a -> b`` in the part of a DAG on some such path: every walk from ``a`` there reaches
    ``b``, so the enumeration never explores a dead end and each path costs its length."""
    if a == b:
        yield [a]
        return
    yield from nx.all_simple_paths(graph.subgraph(on_path).copy(), a, b)


def paths_through(
    graph: nx.DiGraph[str],
    node: str,
    source: str = "input",
    target: str = "logits",
    limit: int = 100,
    max_candidates: int = 10_000,
) -> dict[str, Any]:
    """The ``limit`` strongest paths ``source -> ... -> node -> ... -> target``, each with its
    weakest hop, strongest (by weakest hop) first; KeyError if ``node`` is not in the graph.

    A node's parallel q/k/v edges count as one hop (the strongest of them). The circuit is a
    DAG, so the paths are finite, but their number can grow exponentially with its depth: at
    most ``max_candidates`` paths are enumerated and ranked (the first found, heads and tails in
    the order networkx walks them), and ``truncated`` says more exist.
    A node off every ``source``-``target`` path answers at once with no paths (``reachable``
    false) rather than searching the graph for one.
    """
    if node not in graph:
        raise KeyError(node)
    none: dict[str, Any] = {
        "node": node, "paths": [], "truncated": False, "reachable": False, "candidates": 0,
    }
    if source not in graph or target not in graph:
        return none
    simple: nx.DiGraph[str] = nx.DiGraph(graph)
    into_node, from_node = _reach(simple, node, forward=False), _reach(simple, node)
    if source not in into_node or target not in from_node:
        return none
    heads = into_node & _reach(simple, source)
    tails = from_node & _reach(simple, target, forward=False)
    budget = max(1, max_candidates)
    hop = _hop_strengths(graph)

    def weakest(path: list[str]) -> float | None:
        return min((hop[u, v] for u, v in zip(path, path[1:], strict=False)), default=None)

    # A candidate is a head (source -> node) joined to a tail (node -> target): its weakest hop
    # is the weaker of theirs, so each is scored once and only the paths returned are joined.
    ends = [(t, weakest(t)) for t in islice(_paths_within(simple, node, target, tails), budget + 1)]

    def joined() -> Iterator[tuple[float, list[str], list[str]]]:
        for head in _paths_within(simple, source, node, heads):
            head_weakest = weakest(head)
            for tail, tail_weakest in ends:
                both = [w for w in (head_weakest, tail_weakest) if w is not None]
                yield (min(both) if both else -1.0), head, tail

    found = list(islice(joined(), budget + 1))
    ranked = sorted(found[:budget], key=lambda c: -c[0])[:limit]
    return {
        "node": node,
        "paths": [{"nodes": h + t[1:], "min_abs_score": w if w >= 0 else None} for w, h, t in ranked],
        "truncated": len(found) > min(budget, limit), "reachable": True,
        "candidates": min(len(found), budget),
    }


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
