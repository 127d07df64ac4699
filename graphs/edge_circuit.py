"""Edge-level circuits as ``networkx.MultiDiGraph``: nodes ``input``, ``a{l}.h{h}``, ``m{l}``,
``logits``; edges into heads keyed ``q``/``k``/``v`` (key 0 elsewhere), each carrying its
canonical ``name``, ``score`` and ``in_circuit``.

An edge into a key/value head of a grouped-query model (``a{l}.kv{g}<k>``, see
:mod:`circuitd.edges`) reaches every query head of its group, so it is drawn once into each
of them (``a{l}.h{g*r}`` .. ``a{l}.h{g*r+r-1}``), every copy with the edge's one name and
score and ``kv_head`` naming the key/value head; ``meta["edge_layout"]`` gives ``r``.
Paths, neighbourhoods and node sets then see the heads that really read the edge.

A node-level circuit (``level: "node"`` in the metadata, :mod:`circuitd.methods.node_level`) is stored
the same way, as the edges of its kept nodes; each node also carries its ``score`` and
``in_circuit``, and each edge its source node's score. A neuron-level circuit (``level:
"neuron"``, :mod:`circuitd.methods.neuron_level`) is a list of MLP neurons ``m{l}.n{i}`` (``kind:
"neuron"``, ``layer``, ``neuron``), each with its ``score`` and ``in_circuit``, and no edges."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, cast

import networkx as nx

from graphs.formats import EDGE_CIRCUIT_FORMAT

_HEAD = re.compile(r"^a(\d+)\.h(\d+)$")
_MLP = re.compile(r"^m(\d+)$")
_NEURON = re.compile(r"^m(\d+)\.n(\d+)$")
_EDGE = re.compile(r"^(?P<src>[^<>@]+)->(?P<dst>[^<>@]+?)(?:<(?P<key>[qkv])>)?(?:@(?P<pos>\d+))?$")
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
    if m := _NEURON.match(name):
        return {"kind": "neuron", "layer": int(m.group(1)), "neuron": int(m.group(2))}
    raise ValueError(f"not a node name: '{name}'")


def split_edge_name(name: str) -> tuple[str, str, str | None]:
    """``"a0.h1->a2.h3<q>"`` -> ``("a0.h1", "a2.h3", "q")`` (a position suffix ``@p`` is
    read by :func:`edge_position`)."""
    m = _EDGE.match(name)
    if not m:
        raise ValueError(f"not an edge name: '{name}'")
    return m.group("src"), m.group("dst"), m.group("key")


def edge_position(name: str) -> int | None:
    """The position of a position-aware edge name (``"m0->logits@4"`` -> 4), else None."""
    m = _EDGE.match(name)
    return int(m.group("pos")) if m and m.group("pos") is not None else None


def layout_positions(meta: Mapping[str, Any]) -> list[str] | None:
    """The position names of a position-aware graph's ``meta["edge_layout"]`` (None when not)."""
    layout = meta.get("edge_layout")
    if not isinstance(layout, Mapping):
        return None
    names = cast("Mapping[str, object]", layout).get("positions")
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in cast("list[object]", names)):
        raise ValueError("edge_layout.positions: expected a list of position names")
    return cast("list[str]", names)


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
    nodes: Mapping[str, tuple[float, bool]] | None = None,
) -> nx.MultiDiGraph[str]:
    """The circuit graph; with ``all_edges`` every scored edge is kept, marked in or out.
    ``nodes``: node name -> (score, in circuit), for a node-level circuit."""
    graph: nx.MultiDiGraph[str] = nx.MultiDiGraph(format=EDGE_CIRCUIT_FORMAT, **meta)
    group_size = kv_group_size(meta)
    positions = layout_positions(meta)
    for name, score, kept in zip(names, scores, in_circuit, strict=True):
        if not (kept or all_edges):
            continue
        src, dst, key = split_edge_name(name)
        attrs: dict[str, Any] = {"name": name, "score": float(score), "in_circuit": bool(kept)}
        if key:
            attrs["qkv"] = key
        edge_key: str | int = key if key else 0
        if (pos := edge_position(name)) is not None:
            if positions is None or pos >= len(positions):
                raise ValueError(f"edge '{name}': position {pos} is not in edge_layout.positions")
            attrs.update(position=pos, position_name=positions[pos])
            edge_key = f"{key or ''}@{pos}"
        heads = reading_heads(name, dst, group_size)
        if heads != [dst]:
            attrs["kv_head"] = dst
        for head in heads:
            for node in (src, head):
                if node not in graph:
                    graph.add_node(node, **node_attributes(node))
            graph.add_edge(src, head, key=edge_key, **attrs)
    for node, (score, kept) in (nodes or {}).items():
        if node in graph:
            graph.nodes[node].update(score=float(score), in_circuit=bool(kept))
    return graph


def build_neuron_circuit(
    names: Iterable[str],
    scores: Iterable[float],
    in_circuit: Iterable[bool],
    meta: Mapping[str, Any],
    all_neurons: bool = False,
) -> nx.MultiDiGraph[str]:
    """A neuron-level circuit: its neurons as nodes; with ``all_neurons`` every scored neuron,
    marked in or out."""
    graph: nx.MultiDiGraph[str] = nx.MultiDiGraph(format=EDGE_CIRCUIT_FORMAT, **meta)
    for name, score, kept in zip(names, scores, in_circuit, strict=True):
        if kept or all_neurons:
            graph.add_node(name, **node_attributes(name), score=float(score), in_circuit=bool(kept))
    return graph
