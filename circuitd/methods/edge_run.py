"""How every edge method runs: the model and its edge graph, the task, the method's scores,
the circuit selected from them, its faithfulness, and the edge-circuit graph.

An edge method supplies only ``score(ctx, params) -> MethodResult``; this module does the rest,
so every edge method is evaluated and stored the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from circuitd.edge_context import MethodContext, MethodResult
from circuitd.edges import EdgeGraph, KVHeads, count_edges
from circuitd.errors import CircuitdError
from circuitd.evaluate import Evaluator
from circuitd.jobs import build_task, versions
from circuitd.methods.contract import DEFAULT_TOP_FRACTION, EdgeParams, Result, RunContext
from circuitd.models.registry import load_model, model_shape
from circuitd.selection import select
from circuitd.settings import get_settings
from graphs import build_edge_circuit

if TYPE_CHECKING:
    from circuitd.models.adapter import ModelShape

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


def run_edge_method(run: RunContext, params: P, score: Score[P]) -> Result:
    """Score every edge with ``score``, keep the method's circuit (or the top-n / threshold
    selection), evaluate it with the task's metric and build the graph."""
    spec = run.spec
    started = time.perf_counter()
    shape = model_shape(spec.model)  # from the config: nothing loaded
    check_edge_cap(spec.model, shape, params.split_qkv, params.kv_heads)
    model = load_model(spec.model, spec.device, spec.dtype)
    graph = EdgeGraph(model.shape, params.split_qkv, params.kv_heads)
    task = build_task(spec, model, params.metric)
    ctx = MethodContext(
        model, graph, task, task.metric, params.ablation, spec.batch_size,
        progress=run.scaled(0.0, 0.7), should_stop=run.should_stop,
    )
    result = score(ctx, params)
    scores = result.scores.detach().float().cpu()
    if result.keep is not None:
        keep = result.keep.cpu()
    elif params.threshold is not None:
        keep = select(graph, scores, threshold=params.threshold)
    else:
        keep = select(graph, scores, n=params.top_n or math.ceil(DEFAULT_TOP_FRACTION * graph.n_edges))
    ctx = replace(ctx, progress=run.scaled(0.7, 1.0))
    ctx.report(0.0, "evaluating")
    evaluator = Evaluator(ctx, get_settings().eval_max_elements)
    found: dict[str, Any] = evaluator.summary(keep)
    if params.curve:
        ctx.check_stop()
        curve = evaluator.curve(scores)
        found.update(cpr=curve["cpr"], cmd=curve["cmd"], curve=curve)
    found.update(result.info)
    found["seconds"] = round(time.perf_counter() - started, 3)
    found["n_prompts"] = len(task)
    ctx.report(1.0, "done")
    meta = {
        "model": spec.model,
        "task": spec.task_name,
        "method": spec.method,
        "params": {
            **params.model_dump(mode="json"), "metric": task.metric, "seed": spec.seed,
            "n_prompts": len(task), "task_params": spec.task_params,
        },
        "versions": versions(),
        "metrics": found,
        "edge_layout": graph.layout(),  # how the edge names map to heads (graphs.edge_circuit)
    }
    names, score_list, keep_list = graph.edge_names, scores.tolist(), keep.tolist()
    return Result(
        graph=build_edge_circuit(names, score_list, keep_list, meta),
        full_graph=build_edge_circuit(names, score_list, keep_list, meta, all_edges=True),
        metrics=found,
        scores=scores,
        keep=keep,
    )
