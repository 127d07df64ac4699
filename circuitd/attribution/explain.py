"""An attribution-graph job: the prompt and targets from the spec, the transcoders, the graph
attributed and pruned, optionally validated by interventions, with its metrics and metadata.
This is the ``attribution-graph`` method's entry (:mod:`circuitd.methods.attribution_graph`)."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch

from circuitd.attribution.attribute import attribute
from circuitd.attribution.interventions import check_interventions
from circuitd.attribution.replacement import ReplacementContext, record
from circuitd.errors import CircuitdError, TaskError
from circuitd.jobs import build_task, versions
from circuitd.methods.contract import Result, RunContext
from circuitd.models.adapter import ModelAdapter
from circuitd.models.registry import load_model
from circuitd.settings import get_settings
from circuitd.tasks.base import answer_ids, prompt_ids
from circuitd.transcoders.sources import load_transcoders
from graphs.attribution_graph import AttributionGraph, PruneResult, kind_mask, node_id
from graphs.attribution_networkx import to_networkx

if TYPE_CHECKING:
    from circuitd.methods.attribution_graph import AttributionGraphParams
    from circuitd.spec import JobSpec


def prompt_of(spec: JobSpec, params: AttributionGraphParams, model: ModelAdapter) -> list[int]:
    """The prompt's token ids: ``params.prompt``, or the task's first clean prompt up to its answer
    position (the logits explained are those predicting the answer)."""
    s = model.shape
    if params.prompt is not None:
        ids = prompt_ids(params.prompt, "prompt", model.tokenizer, True, s.d_vocab)
    else:
        task = build_task(spec.model_copy(update={"n_prompts": 1}), model)
        ids = task.clean[0][: task.answer_pos[0] + 1]
    limit = min(get_settings().max_tokens, s.n_ctx)
    if len(ids) > limit:
        raise TaskError("prompt", f"{len(ids)} tokens exceed the limit of {limit}")
    if len(ids) < 2:
        raise TaskError("prompt", "needs at least two tokens (position 0 carries no features)")
    return ids


def target_kwargs(params: AttributionGraphParams, model: ModelAdapter) -> dict[str, Any]:
    """The logit targets of ``params`` as keyword arguments of :func:`circuitd.attribution.attribute`."""
    tok, d_vocab = model.tokenizer, model.shape.d_vocab
    for name in ("target_tokens", "logit_diff"):
        given = getattr(params, name)
        if given is None:
            continue
        ids = [answer_ids(t, f"{name}[{i}]", tok, d_vocab)[0] for i, t in enumerate(given)]
        for j, i in enumerate(ids):
            if i in ids[:j]:
                raise TaskError(f"{name}[{j}]", f"the same token as {name}[{ids.index(i)}]")
        return {"logit_ids": ids} if name == "target_tokens" else {"logit_diff": (ids[0], ids[1])}
    return {"p": params.desired_logit_prob, "max_logits": params.max_n_logits}


def _token_texts(model: ModelAdapter, ids: list[int]) -> list[str]:
    tok = model.tokenizer
    return [tok.decode([i]) if tok is not None else str(i) for i in ids]


def explain(run: RunContext, params: AttributionGraphParams) -> Result:
    """The pruned graph, the full graph (every node, marked ``in_circuit``, the pruned edges as links
    and the whole adjacency in ``graph["adjacency"]``) and the metrics."""
    started = time.perf_counter()
    spec = run.spec

    def report(fraction: float, stage: str) -> None:
        run.check_stop()
        run.report(fraction, stage)

    report(0.0, "loading")
    model = load_model(spec.model, spec.device, spec.dtype)
    tset = load_transcoders(params.transcoders, model)
    ids = prompt_of(spec, params, model)
    targets = target_kwargs(params, model)
    report(0.05, "recording")
    ctx = record(model, tset, torch.tensor(ids))
    limit = params.max_feature_nodes or get_settings().max_feature_nodes
    att = attribute(
        ctx, batch_size=spec.batch_size, max_feature_nodes=limit,
        progress=lambda f, what: report(0.05 + 0.85 * f, what), convention=params.convention, **targets,
    )
    tokens = _token_texts(model, ids)
    if isinstance(params.prompt, str):
        prompt_text = params.prompt
    elif model.tokenizer is not None:  # token ids, or a task's prompt
        prompt_text = model.tokenizer.decode(ids[1:] if ids[0] == model.tokenizer.bos_id else ids)
    else:
        prompt_text = " ".join(tokens)
    graph = att.graph(prompt_text)
    report(0.9, "pruning")
    pruned = graph.prune(params.node_threshold, params.edge_threshold)
    n_targets = sum(n.kind in ("feature", "logit") for n in graph.nodes)
    n_active = int((ctx.activations[:, 1:] > 0).sum())
    logits = [(i, n) for i, n in enumerate(graph.nodes) if n.kind == "logit" and pruned.node_mask[i]]
    top = max(logits, key=lambda x: (x[1].prob, -x[0]))[1]
    out = [to_networkx(graph, pruned, stored=stored) for stored in (False, True)]  # pruned; stored
    found: dict[str, Any] = {  # the scores to_networkx computed from the pruning's influence
        "replacement_score": out[0].graph["replacement_score"],
        "completeness_score": out[0].graph["completeness_score"],
        "n_nodes": pruned.n_nodes, "n_edges": pruned.n_edges,
        "n_nodes_total": len(graph.nodes), "n_edges_total": int((graph.adjacency != 0).sum()),
        "n_active_features": n_active,
        "n_features": sum(n.kind == "feature" for n in graph.nodes),
        "n_features_kept": int((pruned.node_mask & kind_mask(graph.nodes, "feature")).sum()),
        "backward_passes": att.backward_passes,
        "backward_passes_floor": math.ceil(n_targets / spec.batch_size),
        "top_logit": {"token": top.token, "token_id": top.index, "prob": top.prob, "contrast": top.contrast},
    }
    if params.validate_nodes:
        report(0.95, "validating")
        found["validation"] = _validate(params, ctx, graph, pruned)
    found["seconds"] = round(time.perf_counter() - started, 3)
    meta = {
        "model": spec.model, "task": spec.task_name, "method": spec.method,
        "transcoders": params.transcoders,  # None: the model's shipped set
        "prompt_tokens": tokens, "prompt_ids": ids,
        "params": {
            "node_threshold": params.node_threshold, "edge_threshold": params.edge_threshold,
            "max_feature_nodes": limit, "batch_size": spec.batch_size, "convention": params.convention,
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in targets.items()},
        },
        "versions": versions(),
        "metrics": found,
    }
    for g in out:
        g.graph.update(meta)
    report(1.0, "done")
    return Result(graph=out[0], full_graph=out[1], metrics=found)


def _validate(
    params: AttributionGraphParams, ctx: ReplacementContext, graph: AttributionGraph, pruned: PruneResult
) -> dict[str, Any]:
    """Predicted (full graph, pruned graph) against measured logit changes for ``validate_nodes``."""
    ids = graph.node_ids
    where = {x: i for i, x in enumerate(ids)}
    chosen = []
    for j, name in enumerate(params.validate_nodes or []):
        if name not in where:
            raise CircuitdError(f"validate_nodes[{j}]: no node '{name}' in the graph")
        chosen.append(where[name])
    scale, convention = params.validate_scale, params.convention
    full = check_interventions(ctx, graph.adjacency, graph.nodes, chosen, scale, convention)
    kept = graph.adjacency * pruned.edge_mask
    in_pruned = check_interventions(ctx, kept, graph.nodes, chosen, scale, convention)
    return {
        "nodes": list(params.validate_nodes or []),
        "scale": params.validate_scale,
        "targets": [
            {
                "logit": node_id(a.target, graph.n_layers), "token": a.target.token,
                "predicted": a.predicted, "predicted_pruned": b.predicted, "actual": a.actual,
                "predicted_direct": a.predicted_direct, "actual_direct": a.actual_direct,
            }
            for a, b in zip(full, in_pruned, strict=True)
        ],
    }
