"""The one entry point: spec in, circuit out. The CLI and the worker both call it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import networkx as nx
import torch

from circuitd import __version__
from circuitd.edges import EdgeGraph
from circuitd.errors import CircuitdError, TaskError
from circuitd.evaluate import Evaluator
from circuitd.methods import get_method
from circuitd.methods.base import MethodContext, Progress, ShouldStop
from circuitd.models.adapter import ModelAdapter
from circuitd.models.registry import load_model
from circuitd.selection import select
from circuitd.settings import get_settings
from circuitd.spec import DEFAULT_TOP_FRACTION, JobSpec
from circuitd.tasks import load_task_data, resolve_task
from circuitd.tasks.base import Task
from graphs import build_edge_circuit


@dataclass
class CircuitResult:
    """An edge circuit (MultiDiGraph) or an attribution graph (DiGraph), with its metrics."""

    graph: nx.MultiDiGraph | nx.DiGraph  # the circuit only (kept edges / pruned graph)
    full_graph: nx.MultiDiGraph | nx.DiGraph  # every scored edge, marked in_circuit or not
    metrics: dict[str, Any]
    scores: torch.Tensor | None = None  # edge methods: one score per edge
    keep: torch.Tensor | None = None


def build_task(spec: JobSpec, model: ModelAdapter) -> Task:
    """Resolve the spec's task against the model's tokenizer and limits."""
    s = model.shape
    if isinstance(spec.task, str):
        data = load_task_data(
            spec.task, model.tokenizer, s.d_vocab, n=spec.n_prompts, seed=spec.seed, **spec.task_params
        )
    else:
        data = spec.task.head(spec.n_prompts) if spec.n_prompts else spec.task
    if spec.metric:
        data = data.model_copy(update={"metric": spec.metric})
    task = resolve_task(data, model.tokenizer, s.d_vocab, s.n_ctx)
    limit = get_settings().max_tokens
    for i, ids in enumerate(task.clean):
        if len(ids) > limit:
            raise TaskError(f"clean[{i}]", f"{len(ids)} tokens exceed the limit of {limit}")
    return task


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {
        "circuitd": __version__,
        "torch": torch.__version__,
        "transformer_lens": version("transformer-lens"),
    }


def method_params(spec: JobSpec) -> dict[str, Any]:
    """The spec's parameters that the chosen method reads."""
    if spec.method == "eap":
        return {}
    if spec.method == "eap-ig":
        return {"ig_steps": spec.ig_steps}
    return {
        "tau": spec.tau, "abs": spec.abs_diff, "acdc_metric": spec.acdc_metric or "kl",
        "prefilter_top_n": spec.prefilter_top_n, "prefilter_threshold": spec.prefilter_threshold,
        "prefilter_method": spec.prefilter_method, "ig_steps": spec.ig_steps,
    }


def discover(
    spec: JobSpec, progress: Progress | None = None, should_stop: ShouldStop | None = None
) -> CircuitResult:
    if spec.method == "attribution-graph":
        from circuitd.methods.attribution_graph import run_attribution_graph

        pruned, full, found = run_attribution_graph(spec, progress, should_stop)
        return CircuitResult(graph=pruned, full_graph=full, metrics=found)
    started = time.perf_counter()
    model = load_model(spec.model, spec.device, spec.dtype)
    graph = EdgeGraph(model.shape, spec.split_qkv)
    if graph.n_edges > get_settings().max_edges:
        raise CircuitdError(f"model: {graph.n_edges} edges exceed the limit of {get_settings().max_edges}")
    task = build_task(spec, model)

    def stage(lo: float, hi: float) -> Progress | None:
        if progress is None:
            return None
        return lambda f, what: progress(lo + (hi - lo) * f, what)

    params = method_params(spec)
    search_metric = task.metric
    if spec.method == "acdc":  # ACDC tests with KL by default; its EAP prefilter with the task metric
        search_metric = spec.acdc_metric or "kl"
        params["prefilter_metric"] = task.metric
    ctx = MethodContext(
        model, graph, task, search_metric, spec.ablation, params, spec.batch_size,
        stage(0.0, 0.7), should_stop,
    )
    result = get_method(spec.method)(ctx)
    scores = result.scores.detach().float().cpu()
    if result.keep is not None:
        keep = result.keep.cpu()
    elif spec.threshold is not None:
        keep = select(graph, scores, threshold=spec.threshold)
    else:
        n = spec.top_n or math.ceil(DEFAULT_TOP_FRACTION * graph.n_edges)
        keep = select(graph, scores, n=n)
    ctx = replace(ctx, metric=task.metric, progress=stage(0.7, 1.0))  # faithfulness: task metric
    ctx.report(0.0, "evaluating")
    evaluator = Evaluator(ctx, get_settings().eval_max_elements)
    found = evaluator.summary(keep)
    if spec.curve:
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
            "metric": task.metric, "ablation": spec.ablation, "top_n": spec.top_n,
            "threshold": spec.threshold, "split_qkv": spec.split_qkv, "seed": spec.seed,
            "n_prompts": len(task), "task_params": spec.task_params, **params,
        },
        "versions": versions(),
        "metrics": found,
    }
    names = graph.edge_names
    score_list = scores.tolist()
    keep_list = keep.tolist()
    return CircuitResult(
        graph=build_edge_circuit(names, score_list, keep_list, meta),
        full_graph=build_edge_circuit(names, score_list, keep_list, meta, all_edges=True),
        scores=scores,
        keep=keep,
        metrics=found,
    )
