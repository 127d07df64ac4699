"""EAP-IG graph JSON (``Graph.to_json`` of hannamw/EAP-IG; the edge circuits of MIB's circuit track).

The layout::

    {"cfg": {"n_layers": L, "n_heads": H, "parallel_attn_mlp": false, "d_model": D},
     "nodes": {"input": {"in_graph": true}, "a0.h0": {"in_graph": false}, ..., "logits": {...}},
     "edges": {"input->a0.h0<q>": {"score": 0.12, "in_graph": true}, ..., "m1->logits": {...}}}

Nodes are ``input``, ``a{l}.h{h}``, ``m{l}``, ``logits``, as in circuitd. Edges are
``src->dst``, with ``<q>``/``<k>``/``<v>`` on every edge into an attention head. EAP-IG's
graph has the same edges as circuitd's (each head and MLP reads the input and every earlier
head and MLP, the MLP of layer l also the heads of layer l unless ``parallel_attn_mlp``; the
logits read everything). Older EAP-IG writes a node as a bare bool (``"a0.h0": true``); MIB's
files and this writer use ``{"in_graph": bool}``; the reader takes both.

Mapping to circuitd:

* grouped-query models: EAP-IG (and MIB) name k/v edges per query head, as TransformerLens's
  ungrouped attention runs them. A circuitd graph whose k/v edges are per key/value head
  (``a1.kv0<k>``, ``kv_heads=grouped``) is refused with one line: find the circuit with
  ``kv_heads=per-query`` instead (splitting a key/value head's score over its query heads
  would invent per-head scores the method never computed).
* q/k/v: EAP-IG always splits them. A circuitd graph found with ``--no-split-qkv`` (edges
  ``a0.h1->a2.h3`` without a key) is written as the three q/k/v edges, each with the edge's
  score and ``in_graph``; read back it stays split.
* node ``in_graph``: circuitd keeps no node flags; the writer marks a node in the graph when
  an in-graph edge touches it; the reader ignores node flags (edges define the circuit).
* score ``null`` (EAP-IG before scoring) reads as 0.0; an edge missing from a circuitd graph
  is written with score 0.0 and ``in_graph`` false.
* attention-only models: EAP-IG has no such graph. circuitd writes ``"attn_only": true`` in
  ``cfg`` (an extension EAP-IG itself does not read) and no MLP nodes or edges.
* ``d_model`` is written when known and checked when present; EAP-IG's own ``to_json`` of
  older versions omits it.

Reading checks every node and edge name against the edges ``cfg`` implies and, given the
model's config, ``cfg`` against it; a problem is one ``ValueError`` line naming the file and
the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import networkx as nx

from graphs.edge_circuit import KV_HEAD, build_edge_circuit, layout_positions, split_edge_name

QKV = ("q", "k", "v")
SOURCE_FORMAT = "eap-ig"
_HEAD = re.compile(r"^a(\d+)\.h(\d+)$")
_MLP = re.compile(r"^m(\d+)$")


@dataclass(frozen=True)
class EapIgConfig:
    """The ``cfg`` block: what the edge set depends on, plus ``d_model`` when known."""

    n_layers: int
    n_heads: int
    parallel_attn_mlp: bool = False
    d_model: int | None = None
    attn_only: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n_layers": self.n_layers, "n_heads": self.n_heads, "parallel_attn_mlp": self.parallel_attn_mlp,
        }
        if self.d_model is not None:
            out["d_model"] = self.d_model
        if self.attn_only:
            out["attn_only"] = True
        return out


def node_names(cfg: EapIgConfig) -> list[str]:
    """Every node in EAP-IG's order: input, per layer its heads then its MLP, logits."""
    names = ["input"]
    for layer in range(cfg.n_layers):
        names += [f"a{layer}.h{h}" for h in range(cfg.n_heads)]
        if not cfg.attn_only:
            names.append(f"m{layer}")
    return [*names, "logits"]


def edge_names(cfg: EapIgConfig) -> list[str]:
    """Every edge of the model in EAP-IG's order (as ``Graph.from_model`` adds them)."""
    out: list[str] = []
    residual = ["input"]
    for layer in range(cfg.n_layers):
        heads = [f"a{layer}.h{h}" for h in range(cfg.n_heads)]
        for src in residual:
            out += [f"{src}->{head}<{q}>" for head in heads for q in QKV]
            if cfg.parallel_attn_mlp and not cfg.attn_only:
                out.append(f"{src}->m{layer}")
        residual += heads
        if not cfg.attn_only:
            if not cfg.parallel_attn_mlp:  # the MLP also reads this layer's heads
                out += [f"{src}->m{layer}" for src in residual]
            residual.append(f"m{layer}")
    out += [f"{src}->logits" for src in residual]
    return out


def is_eap_ig(data: object) -> bool:
    """True for a JSON document in the EAP-IG layout (and not circuitd's node-link JSON)."""
    obj = _obj(data)
    return obj is not None and {"cfg", "nodes", "edges"} <= set(obj) and "links" not in obj


def _obj(value: object) -> dict[str, Any] | None:
    """``value`` as a JSON object, or None."""
    return cast("dict[str, Any]", value) if isinstance(value, dict) else None


def config_of(graph: nx.MultiDiGraph[str] | nx.DiGraph[str], d_model: int | None = None) -> EapIgConfig:
    """The config a full graph (every edge, ``all_edges``) implies, from its node names."""
    layers: set[int] = set()
    heads: set[int] = set()
    mlps = False
    for node in graph.nodes:
        if m := _HEAD.match(node):
            layers.add(int(m.group(1)))
            heads.add(int(m.group(2)))
        elif m := _MLP.match(node):
            layers.add(int(m.group(1)))
            mlps = True
    if not layers or not heads:
        raise ValueError("graph: no attention heads; cannot tell the model's config")
    parallel = mlps and not graph.has_edge("a0.h0", "m0")
    return EapIgConfig(max(layers) + 1, max(heads) + 1, parallel, d_model, attn_only=not mlps)


def to_eap_ig(
    graph: nx.MultiDiGraph[str] | nx.DiGraph[str], cfg: EapIgConfig | None = None
) -> dict[str, Any]:
    """The EAP-IG document of an edge-circuit graph; ``cfg`` defaults to :func:`config_of`."""
    if layout_positions(graph.graph) is not None:
        raise ValueError(
            "graph: a position-aware circuit (edges split by position); EAP-IG/MIB graphs have no "
            "positions: keep circuitd's JSON, or find the circuit without positions"
        )
    cfg = cfg if cfg is not None else config_of(graph)
    names = edge_names(cfg)
    known = set(names)
    found: dict[str, tuple[float, bool]] = {}
    for _, _, attrs in graph.edges(data=True):
        name = str(attrs["name"])
        value = (float(attrs.get("score", 0.0)), bool(attrs.get("in_circuit", True)))
        src, dst, key = split_edge_name(name)
        if KV_HEAD.match(dst):
            raise ValueError(
                f"graph: edge '{name}' is into a key/value head (kv_heads=grouped); EAP-IG/MIB graphs "
                "have per-query-head k/v edges: find the circuit with kv_heads=per-query"
            )
        targets = [f"{src}->{dst}<{q}>" for q in QKV] if key is None and _HEAD.match(dst) else [name]
        for target in targets:
            if target not in known:
                raise ValueError(f"graph: edge '{name}' is not in the EAP-IG graph of cfg {cfg.to_json()}")
            found[target] = value
    edges: dict[str, dict[str, Any]] = {}
    touched: set[str] = set()
    for name in names:
        score, kept = found.get(name, (0.0, False))
        edges[name] = {"score": score, "in_graph": kept}
        if kept:
            src, dst, _ = split_edge_name(name)
            touched.update((src, dst))
    nodes = {n: {"in_graph": n in touched} for n in node_names(cfg)}
    return {"cfg": cfg.to_json(), "nodes": nodes, "edges": edges}


def write_eap_ig(
    graph: nx.MultiDiGraph[str] | nx.DiGraph[str], path: str | Path, cfg: EapIgConfig | None = None
) -> None:
    """Write atomically, like :func:`graphs.formats.write_json`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_eap_ig(graph, cfg)))
    tmp.replace(path)


def _int(cfg: Mapping[str, Any], key: str, source: str) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{source}: cfg.{key}: expected a positive integer, got {value!r}")
    return value


def parse_config(data: object, source: str) -> EapIgConfig:
    """The ``cfg`` block, checked."""
    cfg = _obj(data)
    if cfg is None:
        raise ValueError(f"{source}: cfg: expected an object")
    parallel = cfg.get("parallel_attn_mlp", False)
    if not isinstance(parallel, bool):
        raise ValueError(f"{source}: cfg.parallel_attn_mlp: expected true or false, got {parallel!r}")
    attn_only = cfg.get("attn_only", False)
    if not isinstance(attn_only, bool):
        raise ValueError(f"{source}: cfg.attn_only: expected true or false, got {attn_only!r}")
    d_model = _int(cfg, "d_model", source) if cfg.get("d_model") is not None else None
    n_layers, n_heads = _int(cfg, "n_layers", source), _int(cfg, "n_heads", source)
    return EapIgConfig(n_layers, n_heads, parallel, d_model, attn_only)


def check_config(found: EapIgConfig, model: EapIgConfig, source: str) -> None:
    """Refuse a file whose ``cfg`` is not the model's, naming the first field that differs."""
    for key in ("n_layers", "n_heads", "parallel_attn_mlp", "attn_only", "d_model"):
        got, want = getattr(found, key), getattr(model, key)
        if key == "d_model" and (got is None or want is None):
            continue
        if got != want:
            raise ValueError(
                f"{source}: cfg.{key}: {json.dumps(got)} does not match the model ({json.dumps(want)})"
            )


def _flag(value: object, source: str, field: str) -> bool:
    obj = _obj(value)
    if obj is not None:
        value = obj.get("in_graph")
    if not isinstance(value, bool):
        raise ValueError(f"{source}: {field}: expected in_graph true or false, got {value!r}")
    return value


def parse_edges(
    data: Mapping[str, Any], source: str
) -> tuple[EapIgConfig, list[str], list[float], list[bool]]:
    """Checked ``cfg`` and the file's edges (names, scores, in_graph) in the file's order."""
    for key in ("cfg", "nodes", "edges"):
        if key not in data:
            raise ValueError(f"{source}: {key}: missing (not an EAP-IG graph file)")
    cfg = parse_config(data["cfg"], source)
    nodes, edges = _obj(data["nodes"]), _obj(data["edges"])
    if nodes is None or edges is None:
        raise ValueError(f"{source}: nodes, edges: expected objects keyed by name")
    known_nodes = set(node_names(cfg))
    for name, value in nodes.items():
        if name not in known_nodes:
            raise ValueError(f"{source}: nodes.{name}: not a node of cfg {cfg.to_json()}")
        _flag(value, source, f"nodes.{name}")
    known = set(edge_names(cfg))
    names: list[str] = []
    scores: list[float] = []
    flags: list[bool] = []
    for name, raw in edges.items():
        field = f"edges.{name}"
        if name not in known:
            raise ValueError(f"{source}: {field}: not an edge of cfg {cfg.to_json()}")
        value = _obj(raw)
        if value is None:
            raise ValueError(f"{source}: {field}: expected {{\"score\": ..., \"in_graph\": ...}}")
        score = value.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
            raise ValueError(f"{source}: {field}.score: expected a number or null, got {score!r}")
        names.append(name)
        scores.append(0.0 if score is None else float(score))
        flags.append(_flag(value, source, field))
    return cfg, names, scores, flags


def from_eap_ig(
    data: Mapping[str, Any], source: str = "EAP-IG graph", model: EapIgConfig | None = None,
    meta: Mapping[str, Any] | None = None,
) -> nx.MultiDiGraph[str]:
    """circuitd's edge-circuit graph (every edge of the file, marked in or out); ``model``: the
    config the file must match."""
    cfg, names, scores, flags = parse_edges(data, source)
    if model is not None:
        check_config(cfg, model, source)
    info = {"source_format": SOURCE_FORMAT, "eap_ig_cfg": cfg.to_json(), **(meta or {})}
    return build_edge_circuit(names, scores, flags, info, all_edges=True)


def read_eap_ig(path: str | Path, model: EapIgConfig | None = None) -> nx.MultiDiGraph[str]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from exc
    obj = _obj(data)
    if obj is None:
        raise ValueError(f"{path}: expected a JSON object with cfg, nodes and edges")
    return from_eap_ig(obj, str(path), model)
