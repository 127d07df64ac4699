"""The ``attribution-graph`` method: one prompt, a transcoder set, the pruned attribution graph.

Unlike the edge methods it explains a single prompt, so it takes ``prompt`` (or a task, whose
first clean prompt, cut at its answer position, is used) instead of a dataset, and returns an
attribution graph (node kinds feature, error, token, logit) rather than an edge circuit. The
stored graph holds every node and edge of the full adjacency, so the service can re-prune it
and export the Neuronpedia layout without recomputing anything.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import networkx as nx
import torch

from circuitd.attribution import ReplacementContext, attribute, check_interventions, record
from circuitd.discover import build_task, versions
from circuitd.errors import CircuitdError, TaskError
from circuitd.methods.base import Cancelled, Progress, ShouldStop
from circuitd.models.adapter import ModelAdapter
from circuitd.models.registry import ZOO_DIR, load_model, parse_model_id
from circuitd.settings import get_settings
from circuitd.spec import JobSpec
from circuitd.tasks.base import answer_ids, prompt_ids
from circuitd.transcoders import TranscoderSet, load
from graphs.attribution import (
    AttributionGraph,
    PruneResult,
    kind_mask,
    node_id,
    to_networkx,
)

TRANSCODERS_SUBDIR = "transcoders"

_CACHE: dict[tuple[str, str, str], TranscoderSet] = {}
_LOCK = threading.Lock()


def default_transcoders(model_id: str) -> Path | None:
    """The transcoder set shipped with a zoo model, if any."""
    ref = parse_model_id(model_id)
    path = ZOO_DIR / ref.name / TRANSCODERS_SUBDIR
    return path if ref.kind == "zoo" and (path / "config.yaml").is_file() else None


def _hub_snapshot(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id))
    except Exception as exc:  # offline, unknown repo, no permission: one line either way
        first = " ".join(str(exc).split())[:200]
        raise CircuitdError(f"transcoders: cannot fetch hub repo '{repo_id}': {first}") from exc


def load_transcoders(source: str | None, model: ModelAdapter) -> TranscoderSet:
    """``source``: a directory in circuit-tracer's layout, a hub repo id (``org/name``), or None
    for the model's shipped set. Cached by (directory, device, dtype), like models."""
    if source is None:
        path = default_transcoders(model.model_id)
        if path is None:
            raise CircuitdError(
                f"transcoders: {model.model_id} ships no transcoders; give a directory or hub id"
            )
    elif Path(source).expanduser().is_dir():
        path = Path(source).expanduser()
    elif source.count("/") == 1 and not source.startswith((".", "/", "~")):
        path = _hub_snapshot(source)
    else:
        raise CircuitdError(f"transcoders: '{source}' is neither a directory nor a hub repo id (org/name)")
    param = next(model.model.parameters())
    key = (str(path.resolve()), str(param.device), str(param.dtype))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = load(path).to(param.device, param.dtype)
        return _CACHE[key]


def prompt_of(spec: JobSpec, model: ModelAdapter) -> list[int]:
    """The prompt's token ids: ``spec.prompt``, or the task's first clean prompt up to its answer
    position (the logits explained are those predicting the answer)."""
    s = model.shape
    if spec.prompt is not None:
        ids = prompt_ids(spec.prompt, "prompt", model.tokenizer, True, s.d_vocab)
    else:
        task = build_task(spec.model_copy(update={"n_prompts": 1}), model)
        ids = task.clean[0][: task.answer_pos[0] + 1]
    limit = min(get_settings().max_tokens, s.n_ctx)
    if len(ids) > limit:
        raise TaskError("prompt", f"{len(ids)} tokens exceed the limit of {limit}")
    if len(ids) < 2:
        raise TaskError("prompt", "needs at least two tokens (position 0 carries no features)")
    return ids


def target_kwargs(spec: JobSpec, model: ModelAdapter) -> dict[str, Any]:
    """The logit targets of ``spec`` as keyword arguments of :func:`circuitd.attribution.attribute`."""
    tok, d_vocab = model.tokenizer, model.shape.d_vocab
    for name in ("target_tokens", "logit_diff"):
        given = getattr(spec, name)
        if given is None:
            continue
        ids = [answer_ids(t, f"{name}[{i}]", tok, d_vocab)[0] for i, t in enumerate(given)]
        for j, i in enumerate(ids):
            if i in ids[:j]:
                raise TaskError(f"{name}[{j}]", f"the same token as {name}[{ids.index(i)}]")
        return {"logit_ids": ids} if name == "target_tokens" else {"logit_diff": (ids[0], ids[1])}
    return {"p": spec.desired_logit_prob, "max_logits": spec.max_n_logits}


def _token_texts(model: ModelAdapter, ids: list[int]) -> list[str]:
    tok = model.tokenizer
    return [tok.decode([i]) if tok is not None else str(i) for i in ids]


def run_attribution_graph(
    spec: JobSpec, progress: Progress | None = None, should_stop: ShouldStop | None = None
) -> tuple[nx.DiGraph, nx.DiGraph, dict[str, Any]]:
    """The pruned graph, the full graph (every node, marked ``in_circuit``, the pruned edges as links
    and the whole adjacency in ``graph["adjacency"]``) and the metrics."""
    started = time.perf_counter()

    def report(fraction: float, stage: str) -> None:
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled")
        if progress is not None:
            progress(fraction, stage)

    report(0.0, "loading")
    model = load_model(spec.model, spec.device, spec.dtype)
    tset = load_transcoders(spec.transcoders, model)
    ids = prompt_of(spec, model)
    targets = target_kwargs(spec, model)
    report(0.05, "recording")
    ctx = record(model, tset, torch.tensor(ids))
    limit = spec.max_feature_nodes or get_settings().max_feature_nodes
    att = attribute(
        ctx, batch_size=spec.batch_size, max_feature_nodes=limit,
        progress=lambda f, what: report(0.05 + 0.85 * f, what), **targets,
    )
    tokens = _token_texts(model, ids)
    if isinstance(spec.prompt, str):
        prompt_text = spec.prompt
    elif model.tokenizer is not None:  # token ids, or a task's prompt
        prompt_text = model.tokenizer.decode(ids[1:] if ids[0] == model.tokenizer.bos_id else ids)
    else:
        prompt_text = " ".join(tokens)
    graph = att.graph(prompt_text)
    report(0.9, "pruning")
    pruned = graph.prune(spec.node_threshold, spec.edge_threshold)
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
    if spec.validate_nodes:
        report(0.95, "validating")
        found["validation"] = _validate(spec, ctx, graph, pruned)
    found["seconds"] = round(time.perf_counter() - started, 3)
    meta = {
        "model": spec.model, "task": spec.task_name, "method": spec.method,
        "transcoders": spec.transcoders,  # None: the model's shipped set
        "prompt_tokens": tokens, "prompt_ids": ids,
        "params": {
            "node_threshold": spec.node_threshold, "edge_threshold": spec.edge_threshold,
            "max_feature_nodes": limit, "batch_size": spec.batch_size,
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in targets.items()},
        },
        "versions": versions(),
        "metrics": found,
    }
    for g in out:
        g.graph.update(meta)
    report(1.0, "done")
    return out[0], out[1], found


def _validate(
    spec: JobSpec, ctx: ReplacementContext, graph: AttributionGraph, pruned: PruneResult
) -> dict[str, Any]:
    """Predicted (full graph, pruned graph) against measured logit changes for ``validate_nodes``."""
    ids = graph.node_ids
    where = {x: i for i, x in enumerate(ids)}
    chosen = []
    for j, name in enumerate(spec.validate_nodes or []):
        if name not in where:
            raise CircuitdError(f"validate_nodes[{j}]: no node '{name}' in the graph")
        chosen.append(where[name])
    full = check_interventions(ctx, graph.adjacency, graph.nodes, chosen, spec.validate_scale)
    kept = graph.adjacency * pruned.edge_mask
    in_pruned = check_interventions(ctx, kept, graph.nodes, chosen, spec.validate_scale)
    return {
        "nodes": list(spec.validate_nodes or []),
        "scale": spec.validate_scale,
        "targets": [
            {
                "logit": node_id(a.target, graph.n_layers), "token": a.target.token,
                "predicted": a.predicted, "predicted_pruned": b.predicted, "actual": a.actual,
                "predicted_direct": a.predicted_direct, "actual_direct": a.actual_direct,
            }
            for a, b in zip(full, in_pruned, strict=True)
        ],
    }
