"""An attribution graph as networkx and as stored: the ``DiGraph`` written to files and served by
the API, its compact matrix encoding, and the way back to an :class:`AttributionGraph`."""

from __future__ import annotations

import base64
import zlib
from collections.abc import Mapping
from typing import Any

import networkx as nx
import numpy as np

from graphs.attribution_graph import (
    AttributionGraph,
    Node,
    PruneResult,
    completeness_score,
    present,
    replacement_score,
)
from graphs.formats import ATTRIBUTION_GRAPH_FORMAT


def _nx_layer(node: Node, n_layers: int) -> int:
    """Numeric layer for drawing: tokens -1 (like ``input``), logits ``n_layers`` (after the last layer)."""
    if node.kind == "token":
        return -1
    if node.kind == "logit":
        return n_layers
    return int(present(node.layer))


def _opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


MATRIX_ENCODING = "coo-int64-float64-zlib-base64"


def encode_matrix(a: np.ndarray) -> dict[str, Any]:
    """A dense matrix as JSON-able text: its non-zero entries' flat indices (int64) and values
    (float64, exact), each zlib-compressed and base64-encoded. A few bytes per non-zero entry
    instead of a node-link record of about a hundred."""

    a = np.asarray(a, dtype=np.float64)
    flat = np.flatnonzero(a)

    def pack(x: np.ndarray) -> str:
        return base64.b64encode(zlib.compress(x.tobytes(), 6)).decode("ascii")

    return {
        "encoding": MATRIX_ENCODING,
        "shape": list(a.shape),
        "index": pack(flat.astype("<i8")),
        "value": pack(a.ravel()[flat].astype("<f8")),
    }


def decode_matrix(doc: Mapping[str, Any]) -> np.ndarray:
    """The matrix written by :func:`encode_matrix`; ValueError if it is not one."""
    import binascii

    if doc.get("encoding") != MATRIX_ENCODING:
        raise ValueError(f"adjacency: unknown encoding {doc.get('encoding')!r} (expected {MATRIX_ENCODING})")
    try:
        rows, cols = (int(x) for x in doc["shape"])
        idx = np.frombuffer(zlib.decompress(base64.b64decode(doc["index"])), dtype="<i8")
        val = np.frombuffer(zlib.decompress(base64.b64decode(doc["value"])), dtype="<f8")
    except (KeyError, TypeError, ValueError, zlib.error, binascii.Error) as exc:
        raise ValueError(f"adjacency: not a readable matrix ({exc})") from exc
    if idx.shape != val.shape or (idx.size and (idx.min() < 0 or idx.max() >= rows * cols)):
        raise ValueError("adjacency: indices and values do not fit the shape")
    a = np.zeros(rows * cols, dtype=np.float64)
    a[idx] = val
    return a.reshape(rows, cols)


def to_networkx(
    graph: AttributionGraph, result: PruneResult | None = None, all_edges: bool = False, stored: bool = False
) -> nx.DiGraph[str]:
    """The graph as a networkx DiGraph keyed by node id.

    By default the pruned graph (``result``, else ``graph.prune()`` with the default thresholds).
    With ``all_edges`` every node and every non-zero edge of the full matrix is kept, each marked
    ``in_circuit``: that graph holds the full adjacency, so :func:`from_networkx` can rebuild it and
    prune again with other thresholds without recomputing anything. ``stored`` is the compact
    form of that, for storage and download: every node, only the pruned graph's edges as links,
    and the full matrix in ``graph["adjacency"]`` (:func:`encode_matrix`); the number of links of
    the full form grows as the square of the nodes, which node-link JSON cannot carry far.

    Node attributes: ``node_id``, ``kind``, ``layer`` (see :func:`_nx_layer`), ``pos``, ``feature``
    (feature index, None unless a feature), ``token_id``, ``token``, ``activation``, ``prob``,
    ``influence`` (full graph), ``cumulative_influence``, ``index`` (row in the matrix),
    ``in_circuit``. Edge attributes: ``weight`` (the signed ``A[t, s]``), ``score`` (the edge score
    used for pruning, 0 outside the node-pruned graph), ``in_circuit``.
    """
    result = graph.prune() if result is None else result
    a = graph.adjacency
    ids = graph.node_ids
    scores = {  # influence on the full graph does not depend on the thresholds: reuse the pruning's
        "replacement_score": replacement_score(a, graph.nodes, result.influence),
        "completeness_score": completeness_score(a, graph.nodes, result.influence),
    }
    attrs: dict[str, Any] = {"format": ATTRIBUTION_GRAPH_FORMAT, **graph.meta}
    attrs.update(
        kind="attribution",
        n_layers=graph.n_layers,
        prompt=graph.prompt,
        node_threshold=result.node_threshold,
        edge_threshold=result.edge_threshold,
        full=bool(all_edges or stored),
        n_nodes_total=len(graph.nodes),
        n_edges_total=int(np.count_nonzero(a)),
        n_nodes=result.n_nodes,
        n_edges=result.n_edges,
        **scores,
    )
    if stored:
        attrs["adjacency"] = encode_matrix(a)
        all_edges = False
    out: nx.DiGraph[str] = nx.DiGraph(**attrs)
    for i, n in enumerate(graph.nodes):
        if not (all_edges or stored or result.node_mask[i]):
            continue
        out.add_node(
            ids[i],
            node_id=ids[i],
            kind=n.kind,
            layer=_nx_layer(n, graph.n_layers),
            pos=int(n.pos),
            feature=int(present(n.index)) if n.kind == "feature" else None,
            token_id=int(present(n.index)) if n.kind in ("token", "logit") else None,
            token=n.token,
            activation=_opt_float(n.activation),
            prob=_opt_float(n.prob),
            contrast=n.contrast,
            influence=float(result.influence[i]),
            cumulative_influence=float(result.cumulative[i]),
            index=i,
            in_circuit=bool(result.node_mask[i]),
        )
    targets, sources = np.nonzero(a if all_edges else result.edge_mask)
    for t, s in zip(targets.tolist(), sources.tolist(), strict=True):
        out.add_edge(
            ids[s],
            ids[t],
            weight=float(a[t, s]),
            score=float(result.edge_scores[t, s]),
            in_circuit=bool(result.edge_mask[t, s]),
        )
    return out


_GRAPH_KEYS = (
    "kind", "n_layers", "prompt", "node_threshold", "edge_threshold", "full", "adjacency", "n_nodes_total",
    "n_edges_total", "n_nodes", "n_edges", "replacement_score", "completeness_score",
)


def graph_parts(graph: nx.DiGraph[str]) -> tuple[list[Node], np.ndarray]:
    """The nodes (in matrix order) and the adjacency of a :func:`to_networkx` graph, pruned or
    full (either form): a pruned graph gives its kept nodes and kept edges only (what a reader
    of it sees), a stored one the matrix it carries."""
    by_index: dict[int, Node] = {}
    keys: dict[Any, int] = {}
    for key, d in graph.nodes(data=True):
        kind = d["kind"]
        i = int(d["index"])
        by_index[i] = Node(
            kind=kind,
            pos=int(d["pos"]),
            layer=int(d["layer"]) if kind in ("feature", "error") else None,
            index=d["feature"] if kind == "feature" else d.get("token_id"),
            activation=d.get("activation"),
            prob=d.get("prob"),
            token=d.get("token"),
            contrast=d.get("contrast"),
        )
        keys[key] = i
    order = sorted(by_index)
    if "adjacency" in graph.graph:
        a = decode_matrix(graph.graph["adjacency"])
        if a.shape != (len(order), len(order)) or order != list(range(len(order))):
            raise ValueError(f"adjacency: shape {a.shape} does not match the {len(order)} nodes")
        return [by_index[i] for i in order], a
    row = {i: r for r, i in enumerate(order)}
    a = np.zeros((len(order), len(order)), dtype=np.float64)
    for u, v, d in graph.edges(data=True):
        a[row[keys[v]], row[keys[u]]] = float(d["weight"])
    return [by_index[i] for i in order], a


def from_networkx(graph: nx.DiGraph[str]) -> AttributionGraph:
    """Rebuild the :class:`AttributionGraph` from a full :func:`to_networkx` graph (``all_edges`` or
    ``stored``).

    Works on a graph read back from node-link JSON too. ValueError for a pruned-only graph: its
    matrix is gone, and pruning what is left would not give the same result.
    """
    if not graph.graph.get("full"):
        raise ValueError("this graph holds only its pruned part; store it with to_networkx(stored=True)")
    n_layers = int(graph.graph["n_layers"])
    if sorted(int(d["index"]) for _, d in graph.nodes(data=True)) != list(range(graph.number_of_nodes())):
        raise ValueError("node indices are not 0..n-1")
    nodes, a = graph_parts(graph)
    meta = {k: v for k, v in graph.graph.items() if k not in _GRAPH_KEYS}
    return AttributionGraph(a, tuple(nodes), n_layers, prompt=graph.graph.get("prompt", ""), meta=meta)
