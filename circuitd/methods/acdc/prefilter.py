"""The prefilter: ACDC's starting circuit from EAP or EAP-IG edge scores, so that the
edges it leaves out need no test."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import torch

from circuitd.edge_context import MethodContext
from circuitd.methods.acdc.order import drop_inputless
from circuitd.methods.eap_scores import edge_scores
from circuitd.selection import above_threshold, top_n

if TYPE_CHECKING:
    from circuitd.methods.acdc import ACDCParams


def prefilter(
    ctx: MethodContext, params: ACDCParams
) -> tuple[torch.Tensor | None, dict[str, Any] | None]:
    """The starting circuit from EAP or EAP-IG scores: the top ``prefilter_top_n`` edges by
    |score|, or those with |score| >= ``prefilter_threshold``; None without either.

    Scores use ``ctx.metric`` (the task's), except that ``kl`` is scored with
    ``logit_diff``: KL's gradient vanishes at the clean model, so EAP on KL would rank
    edges by rounding noise. Under resample ablation the edges out of nodes left without
    incoming edges go too (:func:`drop_inputless`; exact)."""
    n, threshold = params.prefilter_top_n, params.prefilter_threshold
    if n is None and threshold is None:
        return None, None
    method = params.prefilter_method
    metric = "logit_diff" if ctx.metric == "kl" else ctx.metric
    steps = 1 if method == "eap" else params.ig_steps

    t0 = time.perf_counter()
    scores = edge_scores(replace(ctx, metric=metric), steps).cpu()
    # n and threshold are not both None (returned above), so n is set when threshold is not
    keep = top_n(scores, cast(int, n)) if threshold is None else above_threshold(scores, threshold)
    selected = int(keep.sum())
    if ctx.ablation == "resample":
        keep = drop_inputless(ctx.graph, keep)
    info = {
        "method": method, "metric": metric, "ig_steps": steps if method == "eap-ig" else None,
        "top_n": n, "threshold": threshold, "edges_selected": selected,
        "edges_dropped_inputless": selected - int(keep.sum()), "edges_kept": int(keep.sum()),
        "edges_removed": int((~keep).sum()), "seconds": round(time.perf_counter() - t0, 3),
    }
    return keep, info
