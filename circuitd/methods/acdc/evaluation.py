"""What both ACDC paths evaluate a circuit with: the per-minibatch set-up (ablated values,
clean log-probabilities, the starting circuit's cached pass or clean input), the task
metric to minimise over every prompt, and the result of a run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from circuitd import metrics
from circuitd.batch import TaskBatch, iter_batches
from circuitd.edge_context import MethodContext
from circuitd.patching import CachedPass, PatchingEngine

# +1: the task metric is minimised as is; -1: its negation is (higher is better)
METRIC_SIGN = {"kl": 1.0, "nll": 1.0, "logit_diff": -1.0, "prob_diff": -1.0}


@dataclass
class _Batch:
    batch: TaskBatch
    ablated: torch.Tensor
    clean_lp: torch.Tensor | None
    start: CachedPass | None = None
    inputs: torch.Tensor | None = None  # the clean input source (incremental passes)


def metric_sign(metric: str) -> float:
    if metric not in METRIC_SIGN:
        raise ValueError(f"metric: '{metric}' is not one of {', '.join(METRIC_SIGN)}")
    return METRIC_SIGN[metric]


def prepare_batches(
    ctx: MethodContext, engine: PatchingEngine, start: torch.Tensor | None, cached: bool,
    incremental: bool = False,
) -> list[_Batch]:
    """Per minibatch: ablated values, clean log-probabilities (kl), and for the fast path
    the cached pass of the starting circuit ``start`` (bool keep mask; None = all kept), or
    for incremental passes the clean input."""
    mean = ctx.source_means(engine)
    alpha = None if start is None else (~start).to(ctx.model.device, ctx.model.dtype)
    out = []
    with torch.no_grad():
        for b in iter_batches(ctx.task, ctx.batch_size, ctx.model.device):
            ctx.check_stop()
            ablated = engine.ablated_sources(ctx.ablation, b.corrupted, mean)
            lp = None
            if ctx.metric == "kl":
                lp = metrics.clean_logprobs_of(ctx.model.run(b.clean), b)
            cp = engine.cached_pass(b.clean, ablated, alpha) if cached and not incremental else None
            inputs = ctx.model.input_source(b.clean) if incremental else None
            out.append(_Batch(b, ablated, lp, cp, inputs))
    return out


def task_metric(
    ctx: MethodContext,
    batches: list[_Batch],
    logits_of: Callable[[int, _Batch], torch.Tensor],
    at_answers: bool = False,
) -> torch.Tensor:
    """The metric to minimise ``[C]`` (float64), averaged over every prompt of the task;
    ``logits_of(i, batch)`` gives minibatch i's logits ``[C, B, P, V]``, or ``[C, B, V]`` at
    the answer positions with ``at_answers``."""
    per_prompt = metrics.per_prompt_at_answers if at_answers else metrics.per_prompt
    total: torch.Tensor | None = None
    for i, item in enumerate(batches):
        vals = per_prompt(ctx.metric, logits_of(i, item), item.batch, item.clean_lp)
        s = vals.double().sum(-1)
        total = s if total is None else total + s
    assert total is not None
    return metric_sign(ctx.metric) * total / len(ctx.task)


@dataclass
class ACDCRun:
    """Per tau (in the order given): the circuit, each edge's effect when tested, which
    edges were tested; and the work done."""

    taus: list[float]
    keep: torch.Tensor  # [T, n_edges] bool
    effects: torch.Tensor  # [T, n_edges] float64, 0 where untested
    tested: torch.Tensor  # [T, n_edges] bool
    evaluations: int  # circuit passes over the whole task
    skipped: int = 0  # tests the starting circuit made unnecessary (prefiltered edges)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
