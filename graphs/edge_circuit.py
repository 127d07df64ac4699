"""Edge-level circuits as ``networkx.MultiDiGraph``: nodes ``input``, ``a{l}.h{h}``, ``m{l}``,
``logits``; edges into heads keyed ``q``/``k``/``v`` (key 0 elsewhere), each carrying its
canonical ``name``, ``score`` and ``in_circuit``."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import networkx as nx

from graphs.formats import EDGE_CIRCUIT_FORMAT

_HEAD = re.compile(r"^a(\d+)\.h(\d+)$")
_MLP = re.compile(r"^m(\d+)$")
_EDGE = re.compile(r"^(?P<src>[^<>]+)->(?P<dst>[^<>]+?)(?:<(?P<key>[qkv])>)?$")


def node_attributes(name: str) -> dict[str, Any]:
    """``kind`` and ``layer``/``head`` of a node name."""
    if name == "input":
        return {"kind": "input", "layer": -1}
    if name == "logits":
        return {"kind": "logits", "layer": None}
    if m := _HEAD.match(name):
        return {"kind": "attn_head", "layer": int(m.group(1)), "head": int(m.group(2))}
    if m := _MLP.match(name):
        return {"kind": "mlp", "layer": int(m.group(1))}
    raise ValueError(f"not a node name: '{name}'")


def split_edge_name(name: str) -> tuple[str, str, str | None]:
    """``"a0.h1->a2.h3<q>"`` -> ``("a0.h1", "a2.h3", "q")``."""
    m = _EDGE.match(name)
    if not m:
        raise ValueError(f"not an edge name: '{name}'")
    return m.group("src"), m.group("dst"), m.group("key")


def build_edge_circuit(
    names: Iterable[str],
    scores: Iterable[float],
    in_circuit: Iterable[bool],
    meta: Mapping[str, Any],
    all_edges: bool = False,
) -> nx.MultiDiGraph[str]:
    """The circuit graph; with ``all_edges`` every scored edge is kept, marked in or out."""
    graph: nx.MultiDiGraph[str] = nx.MultiDiGraph(format=EDGE_CIRCUIT_FORMAT, **meta)
    for name, score, kept in zip(names, scores, in_circuit, strict=True):
        if not (kept or all_edges):
            continue
        src, dst, key = split_edge_name(name)
        for node in (src, dst):
            if node not in graph:
                graph.add_node(node, **node_attributes(node))
        attrs: dict[str, Any] = {"name": name, "score": float(score), "in_circuit": bool(kept)}
        if key:
            attrs["qkv"] = key
        graph.add_edge(src, dst, key=key if key else 0, **attrs)
    return graph
