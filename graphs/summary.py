"""A human-readable summary of an edge circuit."""

from __future__ import annotations

from collections import Counter

import networkx as nx


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summarize(graph: nx.MultiDiGraph, top: int = 10) -> str:
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
    strongest = sorted(kept, key=lambda e: -abs(e[2].get("score", 0.0)))[:top]
    if strongest:
        lines.append(f"top {len(strongest)} edges by |score|:")
        lines += [f"  {d['name']:<28} {d.get('score', 0.0):+.4g}" for _, _, d in strongest]
    return "\n".join(lines)
