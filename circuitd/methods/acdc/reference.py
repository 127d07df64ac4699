"""The reference ACDC: the algorithm as :mod:`circuitd.methods.acdc` states it, one full
patched pass per tested edge. It is the oracle the fast path's decisions are tested
against."""

from __future__ import annotations

import time

import torch

from circuitd.edge_context import MethodContext
from circuitd.methods.acdc.evaluation import ACDCRun, prepare_batches, task_metric
from circuitd.methods.acdc.order import Liveness, visit_order
from circuitd.patching import PatchingEngine


def _removes(effect: float, tau: float, abs_value: bool) -> bool:
    return (abs(effect) if abs_value else effect) < tau


def acdc_reference(
    ctx: MethodContext, tau: float, abs_value: bool = False, start: torch.Tensor | None = None
) -> ACDCRun:
    """ACDC exactly as :mod:`circuitd.methods.acdc` states, one full pass per test (the oracle).
    ``start``: the starting circuit (bool keep mask; default every edge)."""
    t0 = time.perf_counter()
    graph = ctx.graph
    engine = PatchingEngine(ctx.model, graph)
    batches = prepare_batches(ctx, engine, None, cached=False)
    alive = Liveness(graph)
    keep = torch.ones(graph.n_edges, dtype=torch.bool) if start is None else start.cpu().clone()
    effects = torch.zeros(graph.n_edges, dtype=torch.float64)
    tested = torch.zeros(graph.n_edges, dtype=torch.bool)

    def metric_of(k: torch.Tensor) -> float:
        alpha = (~k).to(ctx.model.device, ctx.model.dtype)
        with torch.no_grad():
            val = task_metric(ctx, batches, lambda _, b: engine.run(b.batch.clean, b.ablated, alpha[None]))
        return float(val[0])

    current = metric_of(keep)
    evaluations, skipped = 1, 0
    for block in visit_order(graph):
        for node in block:
            edges = list(node.edges)
            if not alive(keep, node.node):
                keep[edges] = False
                continue
            for e in edges:
                ctx.check_stop()
                if not keep[e]:
                    skipped += 1
                    continue
                keep[e] = False
                value = metric_of(keep)
                evaluations += 1
                tested[e] = True
                effects[e] = value - current
                if _removes(value - current, tau, abs_value):
                    current = value
                else:
                    keep[e] = True
    return ACDCRun([tau], keep[None], effects[None], tested[None], evaluations, skipped,
                   time.perf_counter() - t0)
