"""How every edge method runs: the model and its edge graph, the task, the method's scores,
the circuit selected from them, its faithfulness, and the edge-circuit graph.

An edge method supplies only ``score(ctx, params) -> MethodResult``; this module does the rest,
so every edge method is evaluated and stored the same way. At ``level: node`` the scores and
the selection are of heads and MLPs (:mod:`circuitd.methods.node_level`); the circuit evaluated and
stored is the node circuit's edges, the curve is over node fractions (``curve_level``), and the
graph records ``level`` and each node's ``score``. At ``level: neuron`` (first-order methods)
they are of MLP neurons (:mod:`circuitd.methods.neuron_level`), stored as a list of neurons.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from circuitd.edge_context import MethodContext, MethodResult
from circuitd.edges import EdgeGraph, KVHeads, count_edges
from circuitd.errors import CircuitdError
from circuitd.evaluate import Evaluator
from circuitd.jobs import build_task, versions
from circuitd.methods.contract import DEFAULT_TOP_FRACTION, EdgeParams, IGSteps, Result, RunContext
from circuitd.methods.neuron_level import NeuronEvaluator, neuron_names, neuron_scores, select_neurons
from circuitd.methods.node_level import (
    EvaluatorOf,
    edges_of_nodes,
    n_candidates,
    node_curve,
    score_nodes,
    select_nodes,
)
from circuitd.models.registry import load_model, model_shape
from circuitd.refine import prune_greedily, refine_by_swaps
from circuitd.selection import select
from circuitd.settings import get_settings
from circuitd.tasks.positions import shared_position_names
from graphs.edge_circuit import build_edge_circuit, build_neuron_circuit

if TYPE_CHECKING:
    import networkx as nx

    from circuitd.models.adapter import ModelAdapter, ModelShape
    from circuitd.tasks.base import Task

P = TypeVar("P", bound=EdgeParams)
Score = Callable[[MethodContext, P], MethodResult]


def check_edge_cap(model_id: str, shape: ModelShape, split_qkv: bool, kv_heads: KVHeads = "grouped") -> None:
    """Refuse a model whose edge graph is over ``CIRCUITD_MAX_EDGES`` (counted in closed form from
    its shape, so before its weights load)."""
    n, limit = count_edges(shape, split_qkv, kv_heads), get_settings().max_edges
    if n > limit:
        gqa = shape.n_key_value_heads and shape.n_key_value_heads < shape.n_heads
        layout = f"split_qkv={split_qkv}" + (f", kv_heads={kv_heads}" if gqa else "")
        raise CircuitdError(f"model: {model_id} has {n} edges ({layout}), over CIRCUITD_MAX_EDGES={limit}")


def edge_graph(model: ModelAdapter, task: Task, params: EdgeParams) -> EdgeGraph:
    """The job's edge graph; with ``positions``, split by the task's token positions (named by
    :func:`~circuitd.tasks.positions.shared_position_names`) and within ``CIRCUITD_MAX_EDGES``."""
    if not params.positions:
        return EdgeGraph(model.shape, params.split_qkv, params.kv_heads)
    names = tuple(shared_position_names(task, model.tokenizer))
    graph = EdgeGraph(model.shape, params.split_qkv, params.kv_heads, positions=names)
    limit = get_settings().max_edges
    if graph.n_edges > limit:
        raise CircuitdError(
            f"params.positions: {len(names)} positions x {graph.n_base_edges} edges = {graph.n_edges} "
            f"position-aware edges, over CIRCUITD_MAX_EDGES={limit}"
        )
    return graph


@dataclass
class Found:
    """A circuit as the workflow stores it: what ``Result.scores`` and ``Result.keep`` hold (per
    edge; per neuron at neuron level), the metrics, and how to build its graph from the
    metadata (``all``: every scored edge or neuron, marked in or out)."""

    scores: torch.Tensor
    keep: torch.Tensor
    metrics: dict[str, Any]
    build: Callable[[dict[str, Any], bool], nx.MultiDiGraph[str]]


def circuit_size(found: Mapping[str, Any]) -> str:
    """A circuit's size at its level, from its metrics: ``18/110 edges``, ``3/10 nodes (18/110
    edges)`` or ``20/512 neurons`` (for one-line reports such as the CLI's)."""
    edges = f"{found.get('n_edges')}/{found.get('n_edges_total')} edges"
    if "n_neurons" in found:
        return f"{found['n_neurons']}/{found.get('n_neurons_total')} neurons"
    if "n_nodes" in found:
        return f"{found['n_nodes']}/{found.get('n_nodes_total')} nodes ({edges})"
    return edges


def default_count(total: int) -> int:
    """What top_n is when neither top_n nor threshold is given: a share of the edges (or nodes)."""
    return math.ceil(DEFAULT_TOP_FRACTION * total)


def evaluators(ctx: MethodContext) -> EvaluatorOf:
    """An :class:`Evaluator` of the task per metric, each prepared on first use."""
    made: dict[str, Evaluator] = {}

    def of(metric: str) -> Evaluator:
        if metric not in made:
            made[metric] = Evaluator(replace(ctx, metric=metric), get_settings().eval_max_elements)
        return made[metric]

    return of


def run_edge_method(run: RunContext, params: P, score: Score[P]) -> Result:
    """Score every edge (node, neuron) with ``score``, keep the method's circuit (or the top-n /
    threshold selection), evaluate it with the task's metric and build the graph."""
    spec = run.spec
    started = time.perf_counter()
    shape = model_shape(spec.model)  # from the config: nothing loaded
    check_edge_cap(spec.model, shape, params.split_qkv, params.kv_heads)
    model = load_model(spec.model, spec.device, spec.dtype)
    task = build_task(spec, model, params.metric)
    graph = edge_graph(model, task, params)
    ctx = MethodContext(
        model, graph, task, task.metric, params.ablation, spec.batch_size,
        progress=run.scaled(0.0, 0.7), should_stop=run.should_stop,
    )
    evaluating = replace(ctx, progress=run.scaled(0.7, 1.0))
    if params.level == "neuron":
        found = neuron_circuit(ctx, params, evaluating)
    else:
        level = node_circuit if params.level == "node" else edge_circuit
        found = level(ctx, params, score, evaluators(ctx), evaluating)
    found.metrics["seconds"] = round(time.perf_counter() - started, 3)
    found.metrics["n_prompts"] = len(task)
    run.report(1.0, "done")
    meta = {
        "model": spec.model,
        "task": spec.task_name,
        "method": spec.method,
        "level": params.level,
        "params": {
            **params.model_dump(mode="json"), "metric": task.metric, "seed": spec.seed,
            "n_prompts": len(task), "task_params": spec.task_params,
        },
        "versions": versions(),
        "metrics": found.metrics,
        "edge_layout": graph.layout(),  # how the edge names map to heads (graphs.edge_circuit)
    }
    return Result(
        graph=found.build(meta, False),
        full_graph=found.build(meta, True),
        metrics=found.metrics,
        scores=found.scores,
        keep=found.keep,
    )


def edge_circuit(
    ctx: MethodContext, params: P, score: Score[P], evaluator_of: EvaluatorOf, evaluating: MethodContext
) -> Found:
    """Edge level: the method's edge scores and circuit (or top-n / threshold), evaluated."""
    result = score(ctx, params)
    scores = result.scores.detach().float().cpu()
    if result.keep is not None:
        keep = result.keep.cpu()
    elif params.threshold is not None:
        keep = select(ctx.graph, scores, threshold=params.threshold)
    else:
        keep = select(ctx.graph, scores, n=params.top_n or default_count(ctx.graph.n_edges))
    evaluating.report(0.0, "evaluating")
    evaluator = evaluator_of(ctx.metric)
    pruned = None
    if params.prune_to is not None:
        check_pruning(int(keep.sum()), params.prune_to)
        pruned = prune_greedily(evaluating, evaluator, keep, params.prune_to)
        keep = pruned.keep
    refined = None
    if params.refine_rounds:
        refined = refine_by_swaps(evaluating, evaluator, keep, params.refine_rounds)
        keep = refined.keep
    found: dict[str, Any] = evaluator.summary(keep)
    if pruned is not None:  # the faithfulness at each size, from the selection's down
        found.update(prune_sizes=pruned.sizes, prune_faithfulness=[round(f, 6) for f in pruned.faithfulness])
    if refined is not None:
        steps = [round(f, 6) for f in refined.faithfulness]  # before any swap, then after each
        found.update(refine_swaps=refined.swaps, refine_faithfulness=steps)
    if params.curve:
        evaluating.check_stop()
        curve = evaluator.curve(scores)
        found.update(cpr=curve["cpr"], cmd=curve["cmd"], curve=curve, curve_level="edge")
    found.update(result.info)
    names, score_list, keep_list = ctx.graph.edge_names, scores.tolist(), keep.tolist()
    return Found(scores, keep, found, lambda meta, every: build_edge_circuit(
        names, score_list, keep_list, meta, all_edges=every
    ))


def check_pruning(selected: int, size: int) -> None:
    """``prune_to`` must be below the selected circuit's size, by at most ``max_prune_steps``."""
    if size >= selected:
        raise CircuitdError(f"prune_to: {size} is not below the selected circuit's {selected} edges")
    limit = get_settings().max_prune_steps
    if selected - size > limit:
        raise CircuitdError(
            f"prune_to: removing {selected - size} edges exceeds CIRCUITD_MAX_PRUNE_STEPS={limit} "
            f"(select fewer edges first, with top_n)"
        )


def node_circuit(
    ctx: MethodContext, params: P, score: Score[P], evaluator_of: EvaluatorOf, evaluating: MethodContext
) -> Found:
    """Node level: node scores, the method's node circuit (or top-n / threshold over heads and
    MLPs), evaluated as its edges; each stored edge carries its source node's score."""
    graph = ctx.graph
    result = score_nodes(ctx, params, score, evaluator_of)
    node_scores = result.scores.double().cpu()
    if result.keep is not None:
        node_keep = result.keep.cpu()
    elif params.threshold is not None:
        node_keep = select_nodes(node_scores, threshold=params.threshold)
    else:
        node_keep = select_nodes(node_scores, n=params.top_n or default_count(n_candidates(graph)))
    keep = edges_of_nodes(graph, node_keep)
    evaluating.report(0.0, "evaluating")
    evaluator = evaluator_of(ctx.metric)
    found: dict[str, Any] = evaluator.summary(keep)
    found.update(n_nodes=int(node_keep[1:].sum()), n_nodes_total=n_candidates(graph))
    if params.curve:
        evaluating.check_stop()
        curve = node_curve(evaluator, node_scores)
        found.update(cpr=curve["cpr"], cmd=curve["cmd"], curve=curve, curve_level="node")
    found.update(result.info)
    stored = node_scores.float()  # as edge scores are stored: a node and its out-edges agree
    edge_scores = stored[torch.tensor(graph.edge_table[1])]
    per_node = zip(stored.tolist(), node_keep.tolist(), strict=True)
    nodes = dict(zip(graph.sources, per_node, strict=True))
    names, score_list, keep_list = graph.edge_names, edge_scores.tolist(), keep.tolist()
    return Found(edge_scores, keep, found, lambda meta, every: build_edge_circuit(
        names, score_list, keep_list, meta, all_edges=every, nodes=nodes
    ))


def neuron_circuit(ctx: MethodContext, params: EdgeParams, evaluating: MethodContext) -> Found:
    """Neuron level (first-order methods): neuron scores, the top-n / threshold neurons, their
    faithfulness with every other MLP neuron ablated, stored as a list of neurons."""
    scores = neuron_scores(ctx, params.ig_steps if isinstance(params, IGSteps) else 1)
    if params.threshold is not None:
        keep = select_neurons(scores, threshold=params.threshold)
    else:
        keep = select_neurons(scores, n=params.top_n or default_count(scores.numel()))
    evaluating.report(0.0, "evaluating")
    evaluator = NeuronEvaluator(ctx)
    found: dict[str, Any] = evaluator.summary(keep)
    if params.curve:
        evaluating.check_stop()
        curve = evaluator.curve(scores)
        found.update(cpr=curve["cpr"], cmd=curve["cmd"], curve=curve, curve_level="neuron")
    names = neuron_names(*scores.shape)
    score_list, keep_list = scores.flatten().tolist(), keep.flatten().tolist()
    return Found(scores.flatten().float(), keep.flatten(), found, lambda meta, every: build_neuron_circuit(
        names, score_list, keep_list, meta, all_neurons=every
    ))
