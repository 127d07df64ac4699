"""ROC of a method's scores against a circuit known by construction.

A known circuit is a JSON file ``{"format": "circuitd.known-circuit/1", "model": "zoo:<name>",
"edges": [...], "nodes": [...]}`` (optional ``"description"``): ``edges`` are names as
:class:`~circuitd.edges.EdgeGraph` writes them (``input->a0.h0<v>``); ``nodes`` are derivable
from the edges (every source and every destination node of a known edge, ``input`` and
``logits`` included) and, when given, must be exactly that set, so the file cannot say two
things. Every edge of the model not in ``edges`` is a negative.

Edge ranking: ``|score|``. Node ranking: a node's score is the *maximum* ``|score|`` over
the edges incident to it (into it or out of it). Ties are handled as the Mann-Whitney
statistic handles them: the AUC uses average ranks, i.e. a tied positive/negative pair counts
one half, and the ROC has one point per distinct score (the diagonal step through a tie), so
the trapezoid area under the points equals the AUC.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitd.edges import EdgeGraph
from circuitd.errors import CircuitdError

KNOWN_FORMAT = "circuitd.known-circuit/1"
_KNOWN_KEYS = {"format", "model", "edges", "nodes", "description"}


@dataclass(frozen=True)
class Roc:
    """An ROC curve (one point per distinct score, from (0, 0) to (1, 1)) and its area."""

    auc: float
    fpr: list[float]
    tpr: list[float]
    n_positive: int
    n_negative: int

    def to_json(self) -> dict[str, Any]:
        return {
            "auc": self.auc, "n_positive": self.n_positive, "n_negative": self.n_negative,
            "points": [[f, t] for f, t in zip(self.fpr, self.tpr, strict=True)],
        }


def _counts(scores: Sequence[float], positive: Sequence[bool]) -> tuple[int, int]:
    if len(scores) != len(positive):
        raise ValueError(f"{len(scores)} scores but {len(positive)} labels")
    if any(math.isnan(s) for s in scores):
        raise ValueError("a score is NaN")
    n_pos = sum(1 for p in positive if p)
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"an ROC needs positives and negatives ({n_pos} positive, {n_neg} negative)")
    return n_pos, n_neg


def auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC of ``scores`` (higher = more likely positive): the Mann-Whitney U
    from average ranks over ``n_pos * n_neg``, so a tied pair counts one half."""
    n_pos, n_neg = _counts(scores, positive)
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank_sum = 0.0  # of the positives, 1-based ranks, ties averaged
    start = 0
    while start < len(order):
        stop = start
        while stop < len(order) and scores[order[stop]] == scores[order[start]]:
            stop += 1
        mean_rank = (start + 1 + stop) / 2  # ranks start+1 .. stop
        rank_sum += mean_rank * sum(1 for i in order[start:stop] if positive[i])
        start = stop
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def roc(scores: Sequence[float], positive: Sequence[bool]) -> Roc:
    """The ROC points at every distinct threshold, highest score first, and :func:`auc`."""
    n_pos, n_neg = _counts(scores, positive)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    fpr, tpr = [0.0], [0.0]
    tp = fp = 0
    start = 0
    while start < len(order):
        stop = start
        while stop < len(order) and scores[order[stop]] == scores[order[start]]:
            if positive[order[stop]]:
                tp += 1
            else:
                fp += 1
            stop += 1
        fpr.append(fp / n_neg)
        tpr.append(tp / n_pos)
        start = stop
    return Roc(auc(scores, positive), fpr, tpr, n_pos, n_neg)


@dataclass(frozen=True)
class KnownCircuit:
    """A circuit known by construction: its model and its edges (nodes derived from them)."""

    model: str
    edges: tuple[str, ...]
    nodes: tuple[str, ...] | None = None  # as the file gave them; checked against the edges
    description: str = ""

    @classmethod
    def read(cls, path: str | Path) -> KnownCircuit:
        """The file at ``path``; each problem is one line naming the file and the field."""
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CircuitdError(f"{path}: not a readable JSON file ({' '.join(str(exc).split())})") from exc
        return cls.from_json(doc, str(path))

    @classmethod
    def from_json(cls, doc: Any, where: str = "known circuit") -> KnownCircuit:
        if not isinstance(doc, dict):
            raise CircuitdError(f"{where}: expected a JSON object")
        if doc.get("format") != KNOWN_FORMAT:  # first: another kind of file says so, not a field
            raise CircuitdError(f"{where}: format: expected {KNOWN_FORMAT!r}, got {doc.get('format')!r}")
        unknown = sorted(set(doc) - _KNOWN_KEYS)
        if unknown:
            raise CircuitdError(f"{where}: {unknown[0]}: not a field of {KNOWN_FORMAT}")
        model = doc.get("model")
        if not isinstance(model, str) or not model:
            raise CircuitdError(f"{where}: model: expected a model id such as 'zoo:known-induction'")
        edges = _names(doc.get("edges"), f"{where}: edges")
        if not edges:
            raise CircuitdError(f"{where}: edges: a known circuit needs at least one edge")
        nodes = None if doc.get("nodes") is None else _names(doc["nodes"], f"{where}: nodes")
        description = doc.get("description", "")
        if not isinstance(description, str):
            raise CircuitdError(f"{where}: description: expected text")
        return cls(model, edges, nodes, description)

    def to_json(self, graph: EdgeGraph) -> dict[str, Any]:
        """The file's content, ``nodes`` derived from the edges in ``graph``'s node order."""
        doc: dict[str, Any] = {"format": KNOWN_FORMAT, "model": self.model}
        if self.description:
            doc["description"] = self.description
        doc["edges"] = list(self.edges)
        doc["nodes"] = known_nodes(graph, self)
        return doc


def _names(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CircuitdError(f"{where}: expected a list of names")
    duplicates = sorted({v for v in value if value.count(v) > 1})
    if duplicates:
        raise CircuitdError(f"{where}: '{duplicates[0]}' is listed twice")
    return tuple(value)


def _known_indices(graph: EdgeGraph, known: KnownCircuit) -> list[int]:
    missing = [e for e in known.edges if e not in graph.edge_index]
    if missing:
        raise CircuitdError(
            f"known circuit edge '{missing[0]}' is not an edge of {known.model}'s edge graph "
            f"({graph.n_edges} edges, q/k/v {'split' if graph.split_qkv else 'not split'})"
        )
    return [graph.edge_index[e] for e in known.edges]


def _incidence(graph: EdgeGraph) -> tuple[list[int], list[int]]:
    """(edge, node) pairs: every edge with its source node and each node it reaches."""
    _, src, _, _ = graph.edge_table
    into_edges, into_nodes = graph.dest_incidence
    return list(range(graph.n_edges)) + into_edges, list(src) + into_nodes


def known_nodes(graph: EdgeGraph, known: KnownCircuit) -> list[str]:
    """The nodes of the known edges (sources and destinations), in ``graph.nodes`` order."""
    chosen = set(_known_indices(graph, known))
    edges, nodes = _incidence(graph)
    hit = {n for e, n in zip(edges, nodes, strict=True) if e in chosen}
    return [name for i, name in enumerate(graph.nodes) if i in hit]


@dataclass(frozen=True)
class KnownReport:
    """Edge- and node-level ROC of one set of scores against a known circuit."""

    model: str
    edge: Roc
    node: Roc

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "edge_ranking": "|score|",
            "node_ranking": "max |score| of the node's incident edges",
            "edge": self.edge.to_json(), "node": self.node.to_json(),
        }


def against_known(
    graph: EdgeGraph, known: KnownCircuit, scores: Mapping[str, float], where: str = "scores"
) -> KnownReport:
    """The ROC of ``scores`` (edge name -> score, every edge of ``graph``) against ``known``.
    ``where`` names the scores' file in the one-line errors: a known edge the model does not
    have, a graph of another model, or a graph that lacks edges (not written with --all-edges)."""
    positive_idx = _known_indices(graph, known)
    derived = known_nodes(graph, known)
    if known.nodes is not None and set(known.nodes) != set(derived):
        odd = sorted(set(known.nodes) ^ set(derived))
        raise CircuitdError(
            f"known circuit nodes: '{odd[0]}' {'is not' if odd[0] in known.nodes else 'is'} a node of "
            f"its edges (nodes are derived from the edges: {', '.join(derived)})"
        )
    foreign = [n for n in scores if n not in graph.edge_index]
    if foreign:
        raise CircuitdError(
            f"{where}: edge '{foreign[0]}' is not in {known.model}'s edge graph "
            "(scores of another model, or of another q/k/v layout?)"
        )
    if len(scores) < graph.n_edges:
        lacking = [e for e in known.edges if e not in scores]
        what = f"no score for known edge '{lacking[0]}'" if lacking else "scores only some edges"
        raise CircuitdError(
            f"{where}: {what}: it has {len(scores)} of {graph.n_edges} edges of {known.model} "
            "(write the graph with discover --all-edges)"
        )
    edge_scores = [abs(float(scores[name])) for name in graph.edge_names]
    nan = [name for name, s in zip(graph.edge_names, edge_scores, strict=True) if math.isnan(s)]
    if nan:
        raise CircuitdError(f"{where}: the score of edge '{nan[0]}' is not a number")
    edge_positive = [False] * graph.n_edges
    for i in positive_idx:
        edge_positive[i] = True
    node_scores = [0.0] * len(graph.nodes)
    for e, n in zip(*_incidence(graph), strict=True):
        node_scores[n] = max(node_scores[n], edge_scores[e])
    node_set = set(derived)
    node_positive = [name in node_set for name in graph.nodes]
    try:
        return KnownReport(known.model, roc(edge_scores, edge_positive), roc(node_scores, node_positive))
    except ValueError as exc:  # every edge or node known: nothing to rank against
        raise CircuitdError(f"known circuit of {known.model}: {exc}") from exc
