"""A human-readable summary of an edge circuit or an attribution graph."""

from __future__ import annotations

from collections import Counter
from typing import Any

import networkx as nx


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summarize_attribution(graph: nx.DiGraph[str], top: int = 10) -> str:
    g = graph.graph
    m = g.get("metrics", {})
    kept = [k for k, d in graph.nodes(data=True) if d.get("in_circuit", True)]
    kinds = Counter(graph.nodes[k].get("kind") for k in kept)
    logits = [d for _, d in graph.nodes(data=True) if d.get("kind") == "logit"]
    logits.sort(key=lambda d: -(d.get("prob") or 0))
    lines = [
        f"attribution graph: {g.get('model')} / {g.get('prompt')!r}",
        f"nodes: {len(kept)} of {g.get('n_nodes_total')} ({kinds.get('feature', 0)} features, "
        f"{kinds.get('error', 0)} errors, {kinds.get('token', 0)} tokens, {kinds.get('logit', 0)} logits)"
        f"   edges: {g.get('n_edges')} of {g.get('n_edges_total')}",
        f"replacement: {_fmt(g.get('replacement_score'))}   completeness: {_fmt(g.get('completeness_score'))}"
        f"   thresholds: node {g.get('node_threshold')}, edge {g.get('edge_threshold')}",
        "logits: " + ", ".join(f"{d.get('token')!r} p={_fmt(d.get('prob'))}" for d in logits),
    ]
    if "backward_passes" in m:
        lines.append(f"backward passes: {m['backward_passes']} (floor {m.get('backward_passes_floor')})")
    feats = [(k, graph.nodes[k]) for k in kept if graph.nodes[k].get("kind") == "feature"]
    feats = sorted(feats, key=lambda kd: -(kd[1].get("influence") or 0.0))[:top]
    if feats:
        lines.append(f"top {len(feats)} features by influence:")
        lines += [
            f"  {k:<16} layer {d['layer']} pos {d['pos']} act {_fmt(d.get('activation'))} "
            f"influence {_fmt(d.get('influence'))}"
            for k, d in feats
        ]
    return "\n".join(lines)


def summarize(graph: nx.MultiDiGraph[str] | nx.DiGraph[str], top: int = 10) -> str:
    if graph.graph.get("kind") == "attribution":
        return summarize_attribution(graph, top)
    g = graph.graph
    m = g.get("metrics", {})
    kept = [(u, v, d) for u, v, d in graph.edges(data=True) if d.get("in_circuit", True)]
    kinds = Counter(graph.nodes[n].get("kind") for n in {x for u, v, _ in kept for x in (u, v)})
    lines = [
        f"circuit: {g.get('model')} / {g.get('task')} / {g.get('method')}",
        f"edges: {m.get('n_edges', len(kept))} of {m.get('n_edges_total', '?')}"
        f"   nodes: {sum(kinds.values())} ({kinds.get('attn_head', 0)} heads, {kinds.get('mlp', 0)} MLPs)",
        f"faithfulness: {_fmt(m.get('faithfulness'))}   metric ({g.get('params', {}).get('metric')}): "
        f"full {_fmt(m.get('metric_full'))}, empty {_fmt(m.get('metric_empty'))}, "
        f"circuit {_fmt(m.get('metric_circuit'))}",
    ]
    if "cpr" in m:
        lines.append(f"CPR: {_fmt(m['cpr'])}   CMD: {_fmt(m['cmd'])}")
    once = {d.get("name", (u, v, i)): (u, v, d) for i, (u, v, d) in enumerate(kept)}  # a k/v edge of a
    # key/value head is drawn into each query head of its group: listed once
    strongest = sorted(once.values(), key=lambda e: -abs(e[2].get("score", 0.0)))[:top]
    if strongest:
        lines.append(f"top {len(strongest)} edges by |score|:")
        lines += [f"  {d['name']:<28} {d.get('score', 0.0):+.4g}" + _at(d) for _, _, d in strongest]
    return "\n".join(lines)


def _at(edge: dict[str, Any]) -> str:
    """A position-aware edge's position name, for the listing."""
    return f"   ({edge['position_name']})" if "position_name" in edge else ""
