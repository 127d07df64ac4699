"""Edge attribution patching (EAP) and EAP-IG with interpolated inputs (REFERENCE §4).

Both score every edge at once on the patching engine: one corrupted pass for the ablated
values, then per interpolation step one forward and one backward pass per minibatch.
"""

from __future__ import annotations

import torch

from circuitd.batch import iter_batches
from circuitd.methods.base import MethodContext, MethodResult
from circuitd.patching import PatchingEngine


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


def run_eap(ctx: MethodContext) -> MethodResult:
    return MethodResult(edge_scores(ctx, steps=1))


def run_eap_ig(ctx: MethodContext) -> MethodResult:
    steps = int(ctx.params.get("ig_steps", 5))
    if steps < 1:
        raise ValueError("ig_steps must be at least 1")
    return MethodResult(edge_scores(ctx, steps=steps))


__all__ = ["run_eap", "run_eap_ig"]
