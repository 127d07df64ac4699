"""The graph-level maths of an attribution graph (Ameisen et al. 2025), on a dense adjacency matrix.

Independent of how the matrix was computed: ``circuitd`` fills it with batched backward passes,
this module only reads it. Pure numpy and networkx, so the API can re-prune a stored graph.

Conventions, fixed here once for every function:

- Nodes are ordered ``[features..., errors..., tokens..., logits...]`` (:class:`Node`).
- ``A[target, source]``: rows are targets, columns sources. Tokens and errors have no inputs
  (zero rows); logits have no outputs (zero columns).
- ``Â = normalized_abs(A)``: ``|A|`` with every non-zero row scaled to sum 1.
- ``w`` (:func:`logit_weights`): the logit probabilities at logit nodes, zero elsewhere.
- Influence (:func:`influence`) is ``w·(Â + Â² + …)``: a node's own weight is *not* included,
  so a logit's influence is 0 and the influence of every other node counts paths of length >= 1.
  Wherever a node's total weight as a target is needed (edge scores, completeness) we use
  ``influence + w``.
- Node ids (:func:`node_id`): ``{layer}_{feature}_{pos}`` for features, ``{layer}_E_{pos}`` for
  errors, ``E_{token}_{pos}`` for tokens and ``{n_layers+1}_{token}_{pos}`` for logits. An error id
  has the letter ``E`` in its middle part and starts with a digit, so it can never equal a feature
  or logit id (three integers) nor a token id (which starts with ``E_``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np

NodeKind = Literal["feature", "error", "token", "logit"]
KINDS: tuple[str, ...] = ("feature", "error", "token", "logit")

_T = TypeVar("_T")


@dataclass(frozen=True)
class Node:
    """One node of an attribution graph; what a viewer needs to name and draw it.

    ``index`` is the transcoder feature index for a feature and the vocabulary id for a token or a
    logit (None for an error). ``layer`` is required for features and errors and ignored for tokens
    and logits. ``pos`` of a logit is the position whose output it reads (the last one). A logit
    with a ``contrast`` token id reads the logit difference ``logit[index] − logit[contrast]``
    rather than the demeaned logit of ``index``.
    """

    kind: NodeKind
    pos: int
    layer: int | None = None
    index: int | None = None
    activation: float | None = None
    prob: float | None = None
    token: str | None = None
    contrast: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"node kind must be one of {KINDS}, not '{self.kind}'")
        if self.kind in ("feature", "error") and self.layer is None:
            raise ValueError(f"a {self.kind} node needs a layer")
        if self.kind != "error" and self.index is None:
            raise ValueError(f"a {self.kind} node needs an index (feature index or token id)")
        if self.kind == "logit" and self.prob is None:
            raise ValueError("a logit node needs its probability")


def present(value: _T | None) -> _T:
    """A field that ``Node.__post_init__`` guarantees for the node's kind, so never None here."""
    assert value is not None
    return value


def node_id(node: Node, n_layers: int) -> str:
    """The node's id, unique within a graph (see the module docstring for why errors cannot collide)."""
    if node.kind == "feature":
        return f"{node.layer}_{node.index}_{node.pos}"
    if node.kind == "error":
        return f"{node.layer}_E_{node.pos}"
    if node.kind == "token":
        return f"E_{node.index}_{node.pos}"
    return f"{n_layers + 1}_{node.index}_{node.pos}"


def check_nodes(nodes: Sequence[Node], adjacency: np.ndarray | None = None) -> None:
    """Raise ValueError unless kinds come in the order features, errors, tokens, logits (and A is n×n)."""
    ranks = [KINDS.index(n.kind) for n in nodes]
    if any(a > b for a, b in zip(ranks, ranks[1:], strict=False)):
        raise ValueError("nodes must be ordered [features..., errors..., tokens..., logits...]")
    if adjacency is not None and adjacency.shape != (len(nodes), len(nodes)):
        raise ValueError(f"adjacency has shape {adjacency.shape}, expected {(len(nodes), len(nodes))}")


def kind_mask(nodes: Sequence[Node], *kinds: str) -> np.ndarray:
    """Boolean vector: which nodes are of one of ``kinds``."""
    return np.array([n.kind in kinds for n in nodes], dtype=bool)


def logit_weights(nodes: Sequence[Node]) -> np.ndarray:
    """``w``: each logit node's probability, zero for every other node."""
    return np.array([float(present(n.prob)) if n.kind == "logit" else 0.0 for n in nodes], dtype=np.float64)


def normalized_abs(adjacency: np.ndarray) -> np.ndarray:
    """``Â``: ``|A|`` with each row scaled to sum 1, so a target splits its unit of credit among its inputs.

    Rows of zeros (nodes without inputs) stay zero.
    """
    a = np.abs(np.asarray(adjacency, dtype=np.float64))
    sums = a.sum(axis=1, keepdims=True)
    return np.divide(a, sums, out=np.zeros_like(a), where=sums > 0)


def _reaching(support: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Nodes with a path (length >= 0) to a seed along the edges of ``support[target, source]``.

    Breadth first from the seeds: each node's row is read once, so O(n²) in all.
    """
    reached = seeds.copy()
    frontier = np.flatnonzero(seeds)
    while frontier.size:
        new = support[frontier].any(axis=0) & ~reached
        reached |= new
        frontier = np.flatnonzero(new)
    return reached


def influence_of_normalized(a_hat: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``w·Â(I − Â)⁻¹`` for an already normalised ``Â``; see :func:`influence`."""
    n = a_hat.shape[0]
    out = np.zeros(n, dtype=np.float64)
    # Only nodes with a path to a weighted node can have influence; solving on them alone keeps the
    # others exactly 0 (no round-off dust) and makes the system smaller.
    live = _reaching(a_hat > 0, weights != 0)
    idx = np.flatnonzero(live)
    if idx.size == 0:
        return out
    sub = a_hat[np.ix_(idx, idx)]
    w = weights[idx]
    # x = wÂ(I − Â)⁻¹  <=>  x(I − Â) = wÂ  <=>  (I − Â)ᵀ xᵀ = Âᵀ wᵀ.
    lhs = np.eye(idx.size) - sub.T
    message = "influence diverges: the graph has a cycle that keeps all of its credit (I − Â is singular)"
    try:
        x = np.linalg.solve(lhs, sub.T @ w)
    except np.linalg.LinAlgError as err:
        raise ValueError(message) from err
    if not np.isfinite(x).all():
        raise ValueError(message)
    out[idx] = x
    return out


def influence(adjacency: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Influence of every node on the logits: ``w·(Â + Â² + …)`` = ``w·Â(I − Â)⁻¹``, exactly.

    ``w`` is not itself included, so a logit's own probability does not count as its influence
    (add ``w`` where a node's weight as a target is wanted). Computed with one linear solve that
    does not assume any node order: for a DAG ``Â`` is nilpotent and the series is finite; for a
    graph with cycles it converges as long as no cycle keeps all of its credit (``Â`` has row sums
    <= 1, so by Perron–Frobenius the series converges exactly when ``I − Â`` is invertible);
    otherwise ValueError. Nodes with no path to a logit get exactly 0.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (adjacency.shape[0],):
        raise ValueError(f"weights have shape {weights.shape}, expected ({adjacency.shape[0]},)")
    return influence_of_normalized(normalized_abs(adjacency), weights)


def _prefix_length(sorted_desc: np.ndarray, threshold: float) -> int:
    """How many of the leading (descending, non-negative) scores it takes to reach ``threshold`` of the total.

    The fewest that reach it: 0 for threshold 0; for threshold 1 every positive score (so round-off
    in the running sum can never drop a tiny one).
    """
    positive = int(np.count_nonzero(sorted_desc > 0))
    if threshold <= 0.0 or positive == 0:
        return 0
    if threshold >= 1.0:
        return positive
    running = np.cumsum(sorted_desc)
    total: float = running[-1]
    first = int(np.searchsorted(running, threshold * total, side="left"))
    return min(first + 1, positive)


def cumulative_share(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank nodes by score (descending, ties by index) and give each the share of the total reached at it.

    Returns ``(order, share)``: ``order`` the indices best first, ``share[i]`` the running sum up to
    and including node ``i`` over the total (0 everywhere when the total is 0). This is the
    ``influence`` that Neuronpedia's viewer filters on.
    """
    order = np.argsort(-scores, kind="stable")
    running = np.cumsum(scores[order])
    share = np.zeros_like(scores, dtype=np.float64)
    if running.size and running[-1] > 0:
        share[order] = running / running[-1]
    return order, share


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune` decided and the scores it decided on.

    ``influence`` and ``cumulative`` are on the full graph; ``edge_scores[t, s]`` and
    ``pruned_influence`` are on the node-pruned graph (before features left without edges are
    dropped). ``edge_mask[t, s]`` only marks edges between kept nodes.
    """

    node_mask: np.ndarray
    edge_mask: np.ndarray
    influence: np.ndarray
    cumulative: np.ndarray
    edge_scores: np.ndarray
    pruned_influence: np.ndarray
    node_threshold: float
    edge_threshold: float

    @property
    def n_nodes(self) -> int:
        return int(self.node_mask.sum())

    @property
    def n_edges(self) -> int:
        return int(self.edge_mask.sum())


def prune(
    adjacency: np.ndarray,
    nodes: Sequence[Node],
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> PruneResult:
    """Keep the nodes and edges that carry most of the influence on the logits (Ameisen et al. 2025).

    1. Nodes: rank *all* nodes by influence (tokens included, as circuit-tracer does; logits have 0)
       and take the fewest, best first, whose running sum reaches ``node_threshold`` of the total
       (ties broken by node order, so exactly the fewest rather than every tie of the last one).
       Of those, features and errors are kept; tokens and logits are always kept. Errors are
       pruned by influence like features: only tokens and logits are exempt.
    2. Edges: zero the rows and columns of dropped nodes, recompute ``Â`` and the influence on that
       node-pruned graph (so a target's credit is split among the inputs that remain), score each
       edge ``Â[t, s]·(influence_t + w_t)`` and keep the fewest, best first (ties by flat index,
       target-major), whose running sum reaches ``edge_threshold`` of the total edge score.
    3. Drop, until nothing changes, features left without a kept incoming or outgoing edge and
       errors left without a kept outgoing edge (errors never have inputs), with their edges.
       Tokens and logits stay even when isolated. Scores are not recomputed after this step.

    Threshold 0 keeps no feature or error; threshold 1 keeps every node (edge) of non-zero score.
    Nothing is modified: re-pruning with other thresholds is just another call on the same matrix.
    """
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, not {value}")
    adjacency = np.asarray(adjacency, dtype=np.float64)
    check_nodes(nodes, adjacency)
    w = logit_weights(nodes)
    always = kind_mask(nodes, "token", "logit")
    is_feature = kind_mask(nodes, "feature")
    is_error = kind_mask(nodes, "error")

    infl = influence_of_normalized(normalized_abs(adjacency), w)
    order, cumulative = cumulative_share(infl)
    node_mask = always.copy()
    top = order[: _prefix_length(infl[order], node_threshold)]
    node_mask[top] = True

    pruned = np.where(node_mask[:, None] & node_mask[None, :], adjacency, 0.0)
    a_hat = normalized_abs(pruned)
    pruned_infl = influence_of_normalized(a_hat, w)
    edge_scores = a_hat * (pruned_infl + w)[:, None]

    flat = edge_scores.ravel()
    candidates = np.flatnonzero(flat > 0)
    ranked = candidates[np.argsort(-flat[candidates], kind="stable")]
    edge_mask = np.zeros(flat.size, dtype=bool)
    edge_mask[ranked[: _prefix_length(flat[ranked], edge_threshold)]] = True
    edge_mask = edge_mask.reshape(edge_scores.shape)

    while True:
        has_out = edge_mask.any(axis=0)
        has_in = edge_mask.any(axis=1)
        keep = node_mask & ~(is_feature & ~(has_out & has_in)) & ~(is_error & ~has_out)
        edge_mask &= keep[:, None] & keep[None, :]
        if np.array_equal(keep, node_mask):
            break
        node_mask = keep

    return PruneResult(
        node_mask=node_mask,
        edge_mask=edge_mask,
        influence=infl,
        cumulative=cumulative,
        edge_scores=edge_scores,
        pruned_influence=pruned_infl,
        node_threshold=float(node_threshold),
        edge_threshold=float(edge_threshold),
    )


def replacement_score(
    adjacency: np.ndarray, nodes: Sequence[Node], node_influence: np.ndarray | None = None
) -> float:
    """Share of the credit reaching the graph's inputs that lands on tokens rather than errors.

    ``Σ_tokens influence / (Σ_tokens influence + Σ_errors influence)`` on the full graph. Tokens and
    errors are where every path back from the logits ends (features without inputs aside), so this
    is the weight of the paths from embeddings to logits that run through features only, against
    those that pass through an error. NaN when neither receives any influence.
    ``node_influence`` may be passed to reuse a computed :func:`influence`.
    """
    infl = _influence_or(adjacency, nodes, node_influence)
    tokens = float(infl[kind_mask(nodes, "token")].sum())
    errors = float(infl[kind_mask(nodes, "error")].sum())
    return tokens / (tokens + errors) if tokens + errors > 0 else float("nan")


def completeness_score(
    adjacency: np.ndarray,
    nodes: Sequence[Node],
    node_influence: np.ndarray | None = None,
    count_inputless: bool = False,
) -> float:
    """Share of the nodes' input that does not come from errors, weighted by the nodes' influence.

    With ``Â`` the normalised full graph and ``v_t = influence_t + w_t`` (a node's weight as a
    target, its own logit probability included)::

        completeness = Σ_t v_t·(1 − Σ_errors Â[t, e]) / Σ_t v_t,   t over nodes with inputs,

    which equals the share of the total edge score ``Σ Â[t, s]·v_t`` carried by edges whose source
    is not an error (the paper's wording: input edges weighted by their target's influence).
    Interpretation: a node without inputs (token, error, a feature with no edges in) has no input
    to be complete about, so it is left out. ``count_inputless=True`` counts such nodes as fully
    complete instead, which is the number circuit-tracer reports. NaN when the weights are all 0.
    """
    infl = _influence_or(adjacency, nodes, node_influence)
    a_hat = normalized_abs(adjacency)
    v = infl + logit_weights(nodes)
    from_errors = a_hat[:, kind_mask(nodes, "error")].sum(axis=1)
    rows = np.ones(len(nodes), dtype=bool) if count_inputless else a_hat.any(axis=1)
    total = float(v[rows].sum())
    return float((v * (1.0 - from_errors))[rows].sum()) / total if total > 0 else float("nan")


def _influence_or(adjacency: np.ndarray, nodes: Sequence[Node], given: np.ndarray | None) -> np.ndarray:
    adjacency = np.asarray(adjacency, dtype=np.float64)
    check_nodes(nodes, adjacency)
    return influence(adjacency, logit_weights(nodes)) if given is None else np.asarray(given)


@dataclass(frozen=True)
class AttributionGraph:
    """An attribution graph as stored: the full, unpruned adjacency and its nodes.

    The matrix is copied to float64 and made read-only, so pruning (any number of times, with any
    thresholds) always starts from the unpruned graph.
    """

    adjacency: np.ndarray
    nodes: tuple[Node, ...]
    n_layers: int
    prompt: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict[str, Any])

    def __post_init__(self) -> None:
        a = np.array(self.adjacency, dtype=np.float64, copy=True)
        if a.ndim != 2 or not np.isfinite(a).all():
            raise ValueError("adjacency must be a finite 2-d matrix")
        a.setflags(write=False)
        object.__setattr__(self, "adjacency", a)
        object.__setattr__(self, "nodes", tuple(self.nodes))
        check_nodes(self.nodes, a)
        ids = self.node_ids
        if len(set(ids)) != len(ids):
            raise ValueError("two nodes share an id (same kind, layer, index and position)")

    @property
    def node_ids(self) -> list[str]:
        return [node_id(n, self.n_layers) for n in self.nodes]

    @property
    def logit_weights(self) -> np.ndarray:
        return logit_weights(self.nodes)

    def influence(self) -> np.ndarray:
        return influence(self.adjacency, self.logit_weights)

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
        return prune(self.adjacency, self.nodes, node_threshold, edge_threshold)

    def scores(self) -> dict[str, float]:
        """Replacement and completeness of the full graph (one influence computation for both)."""
        infl = self.influence()
        return {
            "replacement_score": replacement_score(self.adjacency, self.nodes, infl),
            "completeness_score": completeness_score(self.adjacency, self.nodes, infl),
        }
