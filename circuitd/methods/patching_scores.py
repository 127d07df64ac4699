"""Exact edge patching scores: for every edge, the metric of the full model with that edge
alone ablated minus the metric of the full model, averaged over the prompts.

This is the quantity EAP estimates to first order (``d metric / d alpha`` at alpha = 0,
alpha = 1 ablating the edge), with the same sign, so the two are comparable edge by edge and
equal on a model whose metric is linear in every destination input.

The full model is the kept circuit of an incremental pass
(:class:`~circuitd.patching.IncrementalPass`); each trial removes one edge and recomputes
only the nodes that edge reaches, many trials per call. Architectures without the
adapter's node math (grouped-query attention) run the trials as patched passes from a
cached prefix of the full model instead (``run_from``: exact, slower), as do position-aware
graphs (one trial per edge and position). Cost: edges x prompts single-edge
trials, bounded by ``CIRCUITD_MAX_PATCHING_TRIALS``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

import torch

from circuitd import metrics
from circuitd.batch import TaskBatch, iter_batches
from circuitd.edge_context import MethodContext, MethodResult
from circuitd.errors import CircuitdError
from circuitd.methods.acdc.budget import available_bytes, rows_per_pass, rows_per_trial
from circuitd.patching import IncrementalPass, PatchingEngine, clean_prefix
from circuitd.settings import get_settings

if TYPE_CHECKING:
    from circuitd.methods.edge_patching import PatchingParams


class _Trials(Protocol):
    """One minibatch's logits at the answer positions: of the full model, and of the full
    model minus one edge per row."""

    def full(self) -> torch.Tensor:
        """``[B, V]``"""
        ...

    def without_each(self, group: int, first: int, stop: int) -> torch.Tensor:
        """``[stop - first, B, V]``: row i ablates edge ``first + i`` (flat index, all in
        destination group ``group``)."""
        ...


class _IncrementalTrials:
    """Trials on an incremental pass of the full model: a trial recomputes only the nodes
    its edge reaches."""

    def __init__(self, ctx: MethodContext, batch: TaskBatch, ablated: torch.Tensor):
        model, graph = ctx.model, ctx.graph
        keep = torch.ones(graph.n_edges, dtype=torch.bool, device=model.device)
        self.graph = graph
        with torch.no_grad():
            inputs = model.input_source(batch.clean)
        self.state = IncrementalPass(
            model, graph, inputs, ablated, batch.answer_pos, keep,
            clean_prefix(ctx.ablation, batch.clean, batch.corrupted),
        )

    def full(self) -> torch.Tensor:
        return self.state.logits()

    def without_each(self, group: int, first: int, stop: int) -> torch.Tensor:
        g = self.graph.groups[group]
        rows = torch.arange(stop - first)
        removed = torch.zeros(stop - first, g.n_edges, dtype=torch.bool)
        removed[rows, first - g.offset + rows] = True
        trial = self.state.trial(group, removed.view(-1, g.n_dest, g.n_src).to(self.state.keep.device))
        assert trial.logits is not None  # trial() computes them
        return trial.logits


class _PrefixTrials:
    """Trials as patched passes of the engine, each from the cached pass of the full model
    at the block of the edge's destination (any architecture the engine runs)."""

    def __init__(self, engine: PatchingEngine, batch: TaskBatch, ablated: torch.Tensor):
        self.engine = engine
        self.batch = batch
        self.start = engine.cached_pass(batch.clean, ablated)

    def _answers(self, layer: int, alpha: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return metrics.answer_logits(self.engine.run_from(self.start, layer, alpha), self.batch)

    def full(self) -> torch.Tensor:
        graph = self.engine.graph
        none = torch.zeros(1, graph.n_edges, device=self.engine.model.device)
        return self._answers(graph.shape.n_layers, none)[0]

    def without_each(self, group: int, first: int, stop: int) -> torch.Tensor:
        graph = self.engine.graph
        g = graph.groups[group]
        rows = torch.arange(stop - first)
        alpha = torch.zeros(stop - first, graph.n_edges)
        alpha[rows, first + rows] = 1.0
        layer = graph.shape.n_layers if g.kind == "logits" else g.layer
        return self._answers(layer, alpha.to(self.engine.model.device))


def incremental_supported(ctx: MethodContext) -> bool:
    """Whether the trials can run on incremental passes (the adapter's node math, no k/v
    edges per key/value head); else they run from cached prefixes."""
    return ctx.model.node_math_supported() and not ctx.graph.kv_grouped and not ctx.graph.positions


def check_trial_cap(ctx: MethodContext) -> None:
    """Refuse a job of more single-edge trials (edges x prompts) than
    ``CIRCUITD_MAX_PATCHING_TRIALS``, before any is run."""
    n_edges, n_prompts = ctx.graph.n_edges, len(ctx.task)
    limit = get_settings().max_patching_trials
    if n_edges * n_prompts > limit:
        raise CircuitdError(
            f"patching: {n_edges} edges x {n_prompts} prompts = {n_edges * n_prompts} single-edge trials, "
            f"over CIRCUITD_MAX_PATCHING_TRIALS={limit} (fewer prompts, or eap-ig-act)"
        )


def patching_scores(ctx: MethodContext, rows: int | None = None) -> torch.Tensor:
    """Mean over prompts of ``metric(full model minus edge e) - metric(full model)`` for every
    edge ``[n_edges]``. ``rows``: trials per call (default: as many as the memory budget
    holds). Progress and cancel between calls."""
    check_trial_cap(ctx)
    model, graph = ctx.model, ctx.graph
    engine = PatchingEngine(model, graph)
    incremental = incremental_supported(ctx)
    mean = ctx.source_means(engine)
    batches = list(iter_batches(ctx.task, ctx.batch_size, model.device))
    if rows is None:
        n_tokens = max(b.clean.numel() for b in batches)
        per_row = rows_per_trial if incremental else rows_per_pass
        rows = per_row(model.dtype, graph, n_tokens, available_bytes(model.device, incremental))
    order = list(reversed(range(len(graph.groups))))  # the logits first, as incremental passes ask
    per_position = sum(math.ceil(graph.groups[gi].n_edges / rows) for gi in order)
    calls = len(batches) * graph.n_positions * per_position
    total = torch.zeros(graph.n_edges, dtype=torch.float64, device=model.device)
    done = 0
    for b in batches:
        ctx.check_stop()
        with torch.no_grad():
            ablated = engine.ablated_sources(ctx.ablation, b.corrupted, mean)
            clean_lp = metrics.clean_logprobs_of(model.run(b.clean), b) if ctx.metric == "kl" else None
        trials: _Trials = (
            _IncrementalTrials(ctx, b, ablated) if incremental else _PrefixTrials(engine, b, ablated)
        )
        base = metrics.per_prompt_at_answers(ctx.metric, trials.full(), b, clean_lp).double().sum()
        for at, gi in ((p * graph.n_base_edges, gi) for p in range(graph.n_positions) for gi in order):
            g = graph.groups[gi]
            for first in range(at + g.offset, at + g.stop, rows):
                ctx.check_stop()
                stop = min(first + rows, at + g.stop)
                logits = trials.without_each(gi, first, stop)
                per_prompt = metrics.per_prompt_at_answers(ctx.metric, logits, b, clean_lp)
                total[first:stop] += per_prompt.double().sum(-1) - base
                done += 1
                ctx.report(done / calls, "patching edges")
    return (total / len(ctx.task)).to(model.dtype)


def score_patching(ctx: MethodContext, params: PatchingParams) -> MethodResult:
    return MethodResult(patching_scores(ctx), {"incremental": incremental_supported(ctx)})
