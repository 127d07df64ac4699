"""EAP and EAP-IG scores (Syed et al. 2023; Hanna et al. 2024): every edge at once on the patching engine.

One corrupted pass for the ablated values, then per interpolation step one forward and one
backward pass per minibatch. The ACDC prefilter scores with the same function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from circuitd.batch import iter_batches
from circuitd.edge_context import MethodContext, MethodResult
from circuitd.patching import PatchingEngine

if TYPE_CHECKING:
    from circuitd.methods.eap import EAPIGParams, EAPParams


def edge_scores(ctx: MethodContext, steps: int) -> torch.Tensor:
    """Mean over prompts of ``d metric / d alpha`` for every edge ``[n_edges]``."""
    model, task = ctx.model, ctx.task
    engine = PatchingEngine(model, ctx.graph)
    mean = ctx.source_means(engine)
    total = torch.zeros(ctx.graph.n_edges, device=model.device, dtype=torch.float64)
    batches = list(iter_batches(task, ctx.batch_size, model.device))
    for i, b in enumerate(batches):
        ctx.check_stop()
        ablated = engine.ablated_sources(ctx.ablation, b.corrupted, mean)
        metric_fn = ctx.metric_fn(b, at_answers=True)
        scores = engine.edge_gradients(
            b.clean, ablated, metric_fn, baseline=ablated[0], steps=steps, answer_pos=b.answer_pos
        )
        total += scores.double() * len(b)
        ctx.report((i + 1) / len(batches), "scoring edges")
    return (total / len(task)).to(model.dtype)


def score_eap(ctx: MethodContext, params: EAPParams) -> MethodResult:
    return MethodResult(edge_scores(ctx, steps=1))


def score_eap_ig(ctx: MethodContext, params: EAPIGParams) -> MethodResult:
    return MethodResult(edge_scores(ctx, steps=params.ig_steps))
