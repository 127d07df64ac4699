"""Attribution graphs in the Neuronpedia layout (Ameisen et al. 2025), the JSON that circuit-tracer's and
Neuronpedia's graph viewers read, and a schema check of such documents.

Field names are exactly Neuronpedia's; the values follow what circuit-tracer writes:

- ``feature_type``: ``"cross layer transcoder"`` for every feature (circuit-tracer uses it for
  per-layer transcoders too), ``"mlp reconstruction error"``, ``"embedding"``, ``"logit"``.
- ``layer``: the layer as a string; ``"E"`` for tokens, ``str(n_layers + 1)`` for logits.
- ``feature``: the feature index for a feature, -1 for an error, the position for a token, the
  vocabulary id for a logit.
- ``jsNodeId``: ``{layer}_{feature}-0`` for a feature (the same for every position, so the viewer
  groups one feature's nodes), ``E_{token}-{pos}`` for a token, ``L_{token}-{pos}`` for a logit and,
  for an error, its node id (circuit-tracer's ``{layer}_{pos}-0`` could clash with a feature's).
- ``influence``: the node's cumulative share of total influence at its rank (what the viewer's
  threshold slider compares with ``node_threshold``), None for logits, as circuit-tracer writes.
- ``is_target_logit``: true for the most probable logit (the first one on ties).
- ``clerp``: the label given in ``clerps`` (by node id), else ``""``; for a logit
  ``Output "<token>" (p=0.123)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias, TypeGuard

import networkx as nx
import numpy as np

from graphs.attribution_graph import AttributionGraph, Node, PruneResult
from graphs.attribution_networkx import from_networkx

SCHEMA_VERSION = 1

METADATA_FIELDS: dict[str, tuple[type, ...]] = {
    "slug": (str,),
    "scan": (str,),
    "prompt_tokens": (list,),
    "prompt": (str,),
    "node_threshold": (int, float),
    "schema_version": (int,),
}
QPARAMS_FIELDS: dict[str, tuple[type, ...]] = {
    "pinnedIds": (list,),
    "supernodes": (list,),
    "linkType": (str,),
    "clickedId": (str,),
    "sg_pos": (str,),
}
NODE_FIELDS: dict[str, tuple[type, ...]] = {
    "node_id": (str,),
    "feature": (int,),
    "layer": (str,),
    "ctx_idx": (int,),
    "feature_type": (str,),
    "token_prob": (int, float),
    "is_target_logit": (bool,),
    "jsNodeId": (str,),
    "clerp": (str,),
    "influence": (int, float, type(None)),
    "activation": (int, float, type(None)),
}
LINK_FIELDS: dict[str, tuple[type, ...]] = {
    "source": (str,),
    "target": (str,),
    "weight": (int, float),
}
FEATURE_TYPES = {
    "feature": "cross layer transcoder",
    "error": "mlp reconstruction error",
    "token": "embedding",
    "logit": "logit",
}

GraphParts: TypeAlias = "AttributionGraph | nx.DiGraph[str] | tuple[np.ndarray, Sequence[Node], int]"


def _as_graph(graph_or_parts: GraphParts) -> AttributionGraph:
    if isinstance(graph_or_parts, AttributionGraph):
        return graph_or_parts
    if isinstance(graph_or_parts, nx.DiGraph):
        return from_networkx(graph_or_parts)
    adjacency, nodes, n_layers = graph_or_parts
    return AttributionGraph(adjacency, tuple(nodes), int(n_layers))


def _node_record(
    node: Node, nid: str, n_layers: int, cumulative: float, target: bool, clerp: str | None
) -> dict[str, Any]:
    kind = node.kind
    # Node.__post_init__ guarantees a logit's prob and the index of every node but an error.
    prob = 0.0
    if kind == "logit":
        assert node.prob is not None
        prob = float(node.prob)
    if kind == "feature":
        assert node.index is not None
        layer, feature, js = str(node.layer), int(node.index), f"{node.layer}_{node.index}-0"
    elif kind == "error":
        layer, feature, js = str(node.layer), -1, nid
    elif kind == "token":
        layer, feature, js = "E", int(node.pos), f"E_{node.index}-{node.pos}"
    else:
        assert node.index is not None
        layer, feature, js = str(n_layers + 1), int(node.index), f"L_{node.index}-{node.pos}"
    if clerp is None and kind == "logit":
        label = node.token if node.token is not None else node.index
        what = f"p={prob:.3f}" if node.contrast is None else "logit difference"
        clerp = f'Output "{label}" ({what})'
    return {
        "node_id": nid,
        "feature": feature,
        "layer": layer,
        "ctx_idx": int(node.pos),
        "feature_type": FEATURE_TYPES[kind],
        "token_prob": prob,
        "is_target_logit": bool(target),
        "jsNodeId": js,
        "clerp": clerp or "",
        "influence": None if kind == "logit" else float(cumulative),
        "activation": float(node.activation) if kind == "feature" and node.activation is not None else None,
    }


def to_neuronpedia(
    graph_or_parts: GraphParts,
    slug: str,
    prompt: str,
    prompt_tokens: Sequence[str],
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    scan: str = "",
    result: PruneResult | None = None,
    clerps: Mapping[str, str] | None = None,
    pinned_ids: Sequence[str] = (),
    schema_version: int = SCHEMA_VERSION,
) -> dict[str, Any]:
    """The pruned graph as a Neuronpedia document (a JSON-able dict).

    ``graph_or_parts`` is an :class:`AttributionGraph`, a full networkx graph from
    ``to_networkx(..., all_edges=True)`` (read back from storage, say), or ``(adjacency, nodes,
    n_layers)``. It is pruned with ``node_threshold`` and ``edge_threshold`` unless ``result`` gives
    a pruning already done (then ``node_threshold`` should be the one it used: it goes into
    ``metadata``). Links carry the signed adjacency ``A[t, s]`` as ``weight``.
    """
    graph = _as_graph(graph_or_parts)
    if result is None:
        result = graph.prune(node_threshold, edge_threshold)
    clerps = clerps or {}
    ids = graph.node_ids
    kept = np.flatnonzero(result.node_mask).tolist()
    logits = [i for i in kept if graph.nodes[i].kind == "logit"]
    target = max(logits, key=lambda i: (graph.nodes[i].prob, -i)) if logits else None
    nodes = [
        _node_record(
            graph.nodes[i], ids[i], graph.n_layers, result.cumulative[i], i == target, clerps.get(ids[i])
        )
        for i in kept
    ]
    targets, sources = np.nonzero(result.edge_mask)
    links = [
        {"source": ids[s], "target": ids[t], "weight": float(graph.adjacency[t, s])}
        for t, s in zip(targets.tolist(), sources.tolist(), strict=True)
    ]
    return {
        "metadata": {
            "slug": slug,
            "scan": scan,
            "prompt_tokens": list(prompt_tokens),
            "prompt": prompt,
            "node_threshold": float(node_threshold),
            "schema_version": int(schema_version),
        },
        "qParams": {
            "pinnedIds": list(pinned_ids),
            "supernodes": [],
            "linkType": "both",
            "clickedId": "",
            "sg_pos": "",
        },
        "nodes": nodes,
        "links": links,
    }


def _is_object(value: Any) -> TypeGuard[dict[str, Any]]:
    """A JSON object (its keys are strings in any document read from JSON)."""
    return isinstance(value, dict)


def _is_list(value: Any) -> TypeGuard[list[Any]]:
    return isinstance(value, list)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_fields(
    record: Any, fields: Mapping[str, tuple[type, ...]], where: str, problems: list[str]
) -> TypeGuard[dict[str, Any]]:
    """Append a problem per missing or mistyped field; False when ``record`` is not an object at all."""
    if not _is_object(record):
        problems.append(f"{where}: expected an object, got {_type_name(record)}")
        return False
    for key, types in fields.items():
        if key not in record:
            problems.append(f"{where}: missing '{key}'")
            continue
        value = record[key]
        # bool is an int in Python but not a number (nor an index) in the schema.
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            problems.append(f"{where}.{key}: expected {wanted}, got {_type_name(value)}")
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{where}.{key}: not a finite number ({value})")
    return True


def _check_strings(values: Any, where: str, problems: list[str]) -> None:
    if _is_list(values):
        for i, v in enumerate(values):
            if not isinstance(v, str):
                problems.append(f"{where}[{i}]: expected str, got {_type_name(v)}")


def _records(doc: Mapping[str, Any], key: str, problems: list[str]) -> list[Any]:
    """``doc[key]`` when it is a list; otherwise no records (and a problem if it is there)."""
    value = doc.get(key)
    if key in doc and not _is_list(value):
        problems.append(f"{key}: expected list, got {_type_name(value)}")
    return value if _is_list(value) else []


def validate_neuronpedia(doc: Any) -> list[str]:
    """Problems that keep ``doc`` from being a Neuronpedia graph per Neuronpedia's schema; empty when valid.

    Checks the four top-level sections, every required key and its JSON type (``layer`` a string,
    ``feature`` and ``ctx_idx`` integers, numbers finite, booleans not taken for numbers), lists of
    strings where the schema has them, ``node_threshold`` within [0, 1], node ids unique, every
    link endpoint a node id and every ``ctx_idx`` a position of ``prompt_tokens``. Keys beyond the
    schema are allowed (Neuronpedia's own documents carry more).
    """
    if not _is_object(doc):
        return [f"document: expected an object, got {_type_name(doc)}"]
    problems: list[str] = []
    for section in ("metadata", "qParams", "nodes", "links"):
        if section not in doc:
            problems.append(f"document: missing '{section}'")

    n_tokens = None
    meta = doc.get("metadata")
    if "metadata" in doc and _check_fields(meta, METADATA_FIELDS, "metadata", problems):
        _check_strings(meta.get("prompt_tokens"), "metadata.prompt_tokens", problems)
        if isinstance(meta.get("prompt_tokens"), list):
            n_tokens = len(meta["prompt_tokens"])
        threshold = meta.get("node_threshold")
        if isinstance(threshold, int | float) and not isinstance(threshold, bool) and not 0 <= threshold <= 1:
            problems.append(f"metadata.node_threshold: {threshold} is not within [0, 1]")

    q = doc.get("qParams")
    if "qParams" in doc and _check_fields(q, QPARAMS_FIELDS, "qParams", problems):
        _check_strings(q.get("pinnedIds"), "qParams.pinnedIds", problems)
        if isinstance(q.get("supernodes"), list):
            for i, group in enumerate(q["supernodes"]):
                if not isinstance(group, list):
                    problems.append(f"qParams.supernodes[{i}]: expected list, got {_type_name(group)}")
                else:
                    _check_strings(group, f"qParams.supernodes[{i}]", problems)

    ids: set[str] = set()
    for i, node in enumerate(_records(doc, "nodes", problems)):
        if not _check_fields(node, NODE_FIELDS, f"nodes[{i}]", problems):
            continue
        nid = node.get("node_id")
        if isinstance(nid, str):
            if nid in ids:
                problems.append(f"nodes[{i}].node_id: duplicate '{nid}'")
            ids.add(nid)
        ctx = node.get("ctx_idx")
        if (
            n_tokens is not None and isinstance(ctx, int) and not isinstance(ctx, bool)
            and not 0 <= ctx < n_tokens
        ):
            problems.append(f"nodes[{i}].ctx_idx: {ctx} is not a position of the {n_tokens} prompt tokens")

    for i, link in enumerate(_records(doc, "links", problems)):
        if not _check_fields(link, LINK_FIELDS, f"links[{i}]", problems):
            continue
        for end in ("source", "target"):
            value = link.get(end)
            if isinstance(value, str) and value not in ids:
                problems.append(f"links[{i}].{end}: '{value}' is not a node id")
    return problems
