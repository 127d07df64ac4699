"""Node level: circuits of whole heads and MLPs, for the edge methods that have one.

A node is a source of the edge graph: ``input``, each head ``a{l}.h{h}`` and each MLP ``m{l}``.
Ablating node u ablates every out-edge of u, so every reader of u sees u's ablated value. A
node circuit S (``input`` always in it, ``logits`` always the output) is evaluated as the edge
circuit of the edges out of S into S or into ``logits``: an edge into a node outside S feeds a
value that nobody reads (all that node's outputs are ablated), so leaving it out changes no
metric and keeps the stored graph readable. Faithfulness is then measured by the same
:class:`~circuitd.evaluate.Evaluator` as at edge level.

How a method scores nodes is its parameters' ``node_scoring``
(:class:`~circuitd.methods.contract.EdgeParams`):

- ``sum``: a node's score is the sum of its out-edges' scores. For first-order (additive)
  scores this is exact for the linearised metric: one ``alpha_u`` scaling all of u's out-edges
  has ``d metric / d alpha_u = sum_e d metric / d alpha_e``.
- ``exact``: ``metric(every node but u) - metric(every node)``, one circuit per node, all
  evaluated in batches by ``Evaluator.metric_of``.
- ``greedy``: ACDC over nodes. Nodes are visited in reverse topological order (``m{L-1}``,
  ``a{L-1}.h{H-1}`` .. ``a{L-1}.h0``, ``m{L-2}``, ...: the reverse of the source order); node u
  leaves the current circuit for good when the metric to minimise (ACDC's ``acdc_metric``,
  sign as ACDC's) rises by less than tau (``|change| < tau`` with ``abs_diff``). Its score is
  that change. A model has few nodes (GPT-2 small: 156), so each test is one evaluated circuit.

Scores are ``[n_sources]`` in source order, ``input``'s included (0 where not computed); the
selection (top_n, threshold) is over heads and MLPs only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from circuitd.edge_context import MethodContext, MethodResult
from circuitd.edges import EdgeGraph
from circuitd.evaluate import CURVE_PERCENTS, Evaluator, areas
from circuitd.methods.acdc.evaluation import metric_sign
from circuitd.methods.contract import EdgeParams
from circuitd.selection import above_threshold, top_n

EvaluatorOf = Callable[[str], Evaluator]  # an evaluator of the task under a metric, made once


@runtime_checkable
class GreedyParams(Protocol):
    """What the greedy pass reads from ACDC's parameters."""

    tau: list[float]
    abs_diff: bool
    acdc_metric: str


@dataclass
class NodeScores:
    scores: torch.Tensor  # [n_sources] float64, input's included
    keep: torch.Tensor | None = None  # the method's own node circuit [n_sources] (greedy)
    info: dict[str, Any] = field(default_factory=dict)


def n_candidates(graph: EdgeGraph) -> int:
    """Nodes a circuit may drop: every head and MLP (``input`` is always kept)."""
    return graph.n_sources - 1


def with_input(candidates: torch.Tensor) -> torch.Tensor:
    """A node circuit ``[..., n_sources]`` from the kept heads and MLPs ``[..., n_sources - 1]``."""
    kept_input = torch.ones(*candidates.shape[:-1], 1, dtype=torch.bool, device=candidates.device)
    return torch.cat([kept_input, candidates], -1)


def edges_of_nodes(graph: EdgeGraph, node_keep: torch.Tensor) -> torch.Tensor:
    """Edge circuits ``[..., n_edges]`` of node circuits ``[..., n_sources]``: an edge is kept iff
    its source is and it reaches a kept node or ``logits`` (an edge into a key/value head: any of
    the query heads that read it)."""
    device = node_keep.device
    src = torch.tensor(graph.edge_table[1], device=device)
    inc_edge, inc_node = (torch.tensor(t, device=device) for t in graph.dest_incidence)
    logits = torch.ones(*node_keep.shape[:-1], 1, dtype=torch.bool, device=device)
    alive = torch.cat([node_keep.bool(), logits], -1)  # node index n_sources is logits
    reached = torch.zeros(*node_keep.shape[:-1], graph.n_edges, dtype=torch.long, device=device)
    reached.index_add_(-1, inc_edge, alive[..., inc_node].long())
    return alive[..., src] & (reached > 0)


def out_edge_sums(graph: EdgeGraph, edge_scores: torch.Tensor) -> torch.Tensor:
    """Per node, the sum of its out-edges' scores ``[n_sources]``."""
    src = torch.tensor(graph.edge_table[1], device=edge_scores.device)
    total = torch.zeros(graph.n_sources, dtype=edge_scores.dtype, device=edge_scores.device)
    return total.index_add_(0, src, edge_scores)


def exact_node_scores(evaluator: Evaluator) -> torch.Tensor:
    """Per node, the task metric with that node alone ablated minus the full model's ``[n_sources]``."""
    src = torch.tensor(evaluator.graph.edge_table[1])
    without = src[None, :] != torch.arange(evaluator.graph.n_sources)[:, None]
    return evaluator.metric_of(without).double().cpu() - evaluator.metric_full


@dataclass
class GreedyRun:
    """Per tau: the node circuit, each node's metric change when tested, evaluations run."""

    taus: list[float]
    keep: torch.Tensor  # [T, n_sources] bool
    effects: torch.Tensor  # [T, n_sources] float64
    evaluations: int


def greedy_nodes(ctx: MethodContext, evaluator: Evaluator, taus: list[float], abs_diff: bool) -> GreedyRun:
    """ACDC over nodes (module docstring), one pass per tau on ``evaluator``'s metric."""
    graph = evaluator.graph
    sign = metric_sign(evaluator.ctx.metric)
    order = range(graph.n_sources - 1, 0, -1)
    keeps, effects = [], []
    evaluations = 1
    for t, tau in enumerate(taus):
        keep = torch.ones(graph.n_sources, dtype=torch.bool)
        effect = torch.zeros(graph.n_sources, dtype=torch.float64)
        current = sign * evaluator.metric_full
        for i, node in enumerate(order):
            ctx.check_stop()
            keep[node] = False
            value = sign * float(evaluator.metric_of(edges_of_nodes(graph, keep)))
            evaluations += 1
            effect[node] = value - current
            if (abs(value - current) if abs_diff else value - current) < tau:
                current = value
            else:
                keep[node] = True
            ctx.report((t * len(order) + i + 1) / (len(taus) * len(order)), "ACDC over nodes")
        keeps.append(keep)
        effects.append(effect)
    return GreedyRun(list(taus), torch.stack(keeps), torch.stack(effects), evaluations)


def score_nodes(
    ctx: MethodContext,
    params: EdgeParams,
    score: Callable[[MethodContext, Any], MethodResult],
    evaluator_of: EvaluatorOf,
) -> NodeScores:
    """Node scores (and for ``greedy`` the node circuit) of a method, by its ``node_scoring``."""
    how = params.node_scoring
    if how == "sum":
        result = score(ctx, params)
        return NodeScores(out_edge_sums(ctx.graph, result.scores.detach().double().cpu()), info=result.info)
    if how == "exact":
        ctx.report(0.0, "ablating each node")
        scores = exact_node_scores(evaluator_of(ctx.metric))
        ctx.report(1.0, "ablating each node")
        return NodeScores(scores)
    if how == "greedy":
        if not isinstance(params, GreedyParams):
            name = type(params).__name__
            raise TypeError(f"{name}: greedy node scoring needs tau, abs_diff and acdc_metric")
        run = greedy_nodes(ctx, evaluator_of(params.acdc_metric), params.tau, params.abs_diff)
        info = {
            "tau": run.taus, "abs": params.abs_diff, "evaluations": run.evaluations,
            "n_nodes_per_tau": [int(k[1:].sum()) for k in run.keep],
        }
        return NodeScores(run.effects[0], run.keep[0].clone(), info)
    raise ValueError(f"level: '{params.level}' is not available for {type(params).__name__}")


def select_nodes(scores: torch.Tensor, n: int | None = None, threshold: float | None = None) -> torch.Tensor:
    """The node circuit ``[n_sources]``: ``input`` and the ``n`` heads and MLPs of largest |score|,
    or those with |score| >= ``threshold`` (exactly one of the two)."""
    if (n is None) == (threshold is None):
        raise ValueError("give exactly one of top_n and threshold")
    candidates = scores[1:]
    chosen = top_n(candidates, n) if n is not None else above_threshold(candidates, float(threshold or 0.0))
    return with_input(chosen)


def node_curve(
    evaluator: Evaluator, scores: torch.Tensor, percents: tuple[float, ...] = CURVE_PERCENTS
) -> dict[str, Any]:
    """Faithfulness of the top-k nodes by |score| at each node percentage (of heads and MLPs),
    with CPR and CMD over the node fraction (trapezoids), as ``Evaluator.curve`` over edges."""
    graph = evaluator.graph
    ks = [max(1, math.ceil(p / 100 * n_candidates(graph))) for p in percents]
    edge_masks = edges_of_nodes(graph, torch.stack([select_nodes(scores, n=k) for k in ks]))
    f = evaluator.faithfulness_of(edge_masks)
    return {
        "percents": list(percents),
        "n_nodes": ks,
        "n_edges": edge_masks.sum(-1).tolist(),
        "faithfulness": f,
        **areas(percents, f),
    }
