"""Edge-level circuits as ``networkx.MultiDiGraph``: nodes ``input``, ``a{l}.h{h}``, ``m{l}``,
``logits``; edges into heads keyed ``q``/``k``/``v`` (key 0 elsewhere), each carrying its
canonical ``name``, ``score`` and ``in_circuit``.

An edge into a key/value head of a grouped-query model (``a{l}.kv{g}<k>``, see
:mod:`circuitd.edges`) reaches every query head of its group, so it is drawn once into each
of them (``a{l}.h{g*r}`` .. ``a{l}.h{g*r+r-1}``), every copy with the edge's one name and
score and ``kv_head`` naming the key/value head; ``meta["edge_layout"]`` gives ``r``.
Paths, neighbourhoods and node sets then see the heads that really read the edge."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, cast

import networkx as nx

from graphs.formats import EDGE_CIRCUIT_FORMAT

_HEAD = re.compile(r"^a(\d+)\.h(\d+)$")
_MLP = re.compile(r"^m(\d+)$")
_EDGE = re.compile(r"^(?P<src>[^<>]+)->(?P<dst>[^<>]+?)(?:<(?P<key>[qkv])>)?$")
KV_HEAD = re.compile(r"^a(\d+)\.kv(\d+)$")


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


def kv_group_size(meta: Mapping[str, Any]) -> int | None:
    """Query heads per key/value head from ``meta["edge_layout"]`` (None when not recorded)."""
    layout = meta.get("edge_layout")
    if not isinstance(layout, Mapping):
        return None
    fields = cast("Mapping[str, object]", layout)
    heads, kv = fields.get("n_heads"), fields.get("n_key_value_heads")
    if not isinstance(heads, int) or not isinstance(kv, int) or kv < 1 or heads % kv:
        raise ValueError(f"edge_layout: n_heads {heads!r} is not a multiple of n_key_value_heads {kv!r}")
    return heads // kv


def reading_heads(name: str, dst: str, group_size: int | None) -> list[str]:
    """The nodes an edge named ``name`` into ``dst`` reaches: ``dst``, or the query heads of a
    key/value head."""
    m = KV_HEAD.match(dst)
    if m is None:
        return [dst]
    if group_size is None:
        raise ValueError(f"edge '{name}': a key/value head needs edge_layout (n_heads, n_key_value_heads)")
    layer, kv = int(m.group(1)), int(m.group(2))
    return [f"a{layer}.h{h}" for h in range(kv * group_size, (kv + 1) * group_size)]


def build_edge_circuit(
    names: Iterable[str],
    scores: Iterable[float],
    in_circuit: Iterable[bool],
    meta: Mapping[str, Any],
    all_edges: bool = False,
) -> nx.MultiDiGraph[str]:
    """The circuit graph; with ``all_edges`` every scored edge is kept, marked in or out."""
    graph: nx.MultiDiGraph[str] = nx.MultiDiGraph(format=EDGE_CIRCUIT_FORMAT, **meta)
    group_size = kv_group_size(meta)
    for name, score, kept in zip(names, scores, in_circuit, strict=True):
        if not (kept or all_edges):
            continue
        src, dst, key = split_edge_name(name)
        attrs: dict[str, Any] = {"name": name, "score": float(score), "in_circuit": bool(kept)}
        if key:
            attrs["qkv"] = key
        heads = reading_heads(name, dst, group_size)
        if heads != [dst]:
            attrs["kv_head"] = dst
        for head in heads:
            for node in (src, head):
                if node not in graph:
                    graph.add_node(node, **node_attributes(node))
            graph.add_edge(src, head, key=key if key else 0, **attrs)
    return graph
