"""ACDC as an edge method's score: the prefilter, the fast run over every tau, and the figures
reported with the circuit."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from circuitd.edge_context import MethodContext, MethodResult
from circuitd.methods.acdc.evaluation import ACDCRun
from circuitd.methods.acdc.fast import acdc_fast
from circuitd.methods.acdc.prefilter import prefilter

if TYPE_CHECKING:
    from circuitd.methods.acdc import ACDCParams


def score_acdc(
    ctx: MethodContext, params: ACDCParams, rows: int | None = None, memory: int | None = None
) -> MethodResult:
    """ACDC with ``params``; ``ctx.metric`` is the task's metric (the prefilter's), the tests
    use ``params.acdc_metric``. ``rows``: circuits per pass, or ``memory``: bytes a pass may use
    (default from the free memory).

    Scores are each edge's effect when tested for the first tau, ``keep`` that tau's
    circuit; ``info`` holds the per-tau edge counts, the evaluations run and saved, the
    prefilter's figures, and for a sweep each surviving edge's largest surviving tau."""
    if rows is not None and rows < 1:
        raise ValueError("rows must be at least 1")
    if memory is not None and memory < 1:
        raise ValueError("memory must be a positive number of bytes")
    start, pre_info = None, None
    progress = ctx.progress
    if params.prefilter_top_n is not None or params.prefilter_threshold is not None:
        start, pre_info = prefilter(replace(ctx, progress=ctx.scaled(0.0, 0.1, "prefilter: ")), params)
        progress = ctx.scaled(0.1, 1.0)
    search = replace(ctx, metric=params.acdc_metric, progress=progress)
    run = acdc_fast(search, params.tau, params.abs_diff, start, rows, memory)
    info: dict[str, Any] = {
        "tau": run.taus,
        "abs": params.abs_diff,
        "n_edges_per_tau": [int(k.sum()) for k in run.keep],
        "tests_per_tau": [int(t.sum()) for t in run.tested],
        "evaluations": run.evaluations,
        "evaluations_saved": run.skipped,
        "rows_per_pass": run.extra["rows_per_pass"],
        "acdc_seconds": round(run.seconds, 3),
        "prediction_seconds": run.extra["prediction_seconds"],
        "prefilter": pre_info,
    }
    if len(run.taus) > 1:
        info["largest_surviving_tau"] = largest_surviving_tau(run, ctx.graph.edge_names)
    scores = run.effects[0].to(ctx.model.dtype)
    return MethodResult(scores, info, run.keep[0].clone())


def largest_surviving_tau(run: ACDCRun, names: list[str]) -> dict[str, float]:
    """Edge name -> the largest tau whose circuit keeps it (edges kept by some tau)."""
    out: dict[str, float] = {}
    for tau, keep in sorted(zip(run.taus, run.keep, strict=True), key=lambda x: x[0]):
        for i in keep.nonzero().squeeze(1).tolist():
            out[names[i]] = tau
    return out

