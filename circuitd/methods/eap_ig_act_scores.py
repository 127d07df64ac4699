"""EAP-IG over activations (``eap-ig-act``; Hanna et al. 2024, MIB's "EAP-IG (activations)"):
integrated gradients along each block's source activations, interpolated between ablated and
clean, instead of along the input embedding (:mod:`circuitd.methods.eap_scores`), on the
patching engine's edge weights (:meth:`~circuitd.patching.PatchingEngine.circuit_gradients`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from circuitd.batch import iter_batches
from circuitd.edge_context import MethodContext, MethodResult
from circuitd.edges import EdgeGraph
from circuitd.methods.acdc.budget import available_bytes, rows_per_pass
from circuitd.patching import PatchingEngine

if TYPE_CHECKING:
    from circuitd.methods.eap import EAPIGActParams


def source_blocks(graph: EdgeGraph) -> list[int]:
    """The block of every source, the unit EAP-IG over activations interpolates at once (as
    MIB's nodes ``input``, ``a{l}``, ``m{l}``): 0 the input, then per layer its heads, then
    its MLP."""
    blocks, n = [0], 1
    for _ in range(graph.shape.n_layers):
        blocks += [n] * graph.shape.n_heads
        n += 1
        if not graph.shape.attn_only:
            blocks.append(n)
            n += 1
    return blocks


def interpolation_rows(
    graph: EdgeGraph, steps: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The circuits EAP-IG over activations differentiates, ``alpha [R, n_edges]``, and which
    edges read each one's gradient, ``owner [R, n_edges]`` (bool).

    Row 0: the clean model (step k = m, every block at its clean value), read by every edge.
    Then for k = 1 .. m-1 and each block N: the edges out of N at weight 1 - k/m, so that
    N's outputs reach every destination as ``k/m clean + (1 - k/m) ablated`` while everything
    upstream of N stays clean (so N's outputs are computed clean); read by N's edges."""
    _, src, _, _ = graph.edge_table
    block = torch.tensor(source_blocks(graph), device=device)[torch.tensor(src, device=device)]
    out_of = block[None, :] == torch.arange(int(block.max()) + 1, device=device)[:, None]  # [N, E]
    weights = torch.tensor([1 - k / steps for k in range(1, steps)], device=device, dtype=dtype)
    alpha = (weights[:, None, None] * out_of[None]).reshape(-1, graph.n_edges)
    owner = out_of.repeat(steps - 1, 1)
    clean = torch.zeros(1, graph.n_edges, device=device, dtype=dtype)
    every = torch.ones(1, graph.n_edges, device=device, dtype=torch.bool)
    return torch.cat([clean, alpha]), torch.cat([every, owner])


def gradient_rows(ctx: MethodContext, n_tokens: int) -> int:
    """Circuits per differentiated pass: a patched pass's budget over the layers, whose
    intermediates the backward pass keeps."""
    budget = available_bytes(ctx.model.device) // (ctx.graph.shape.n_layers + 1)
    return rows_per_pass(ctx.model.dtype, ctx.graph, n_tokens, budget)


def activation_ig_scores(ctx: MethodContext, steps: int, rows: int | None = None) -> torch.Tensor:
    """EAP-IG over activations (Hanna et al. 2024; MIB's "EAP-IG (activations)") ``[n_edges]``:
    ``(ablated_u - clean_u) . (1/m) sum_{k=1..m} d metric / d input_v`` for every edge u -> v,
    the gradient at step k taken with the outputs of u's block (the input, one layer's heads,
    or one MLP) set to ``k/m clean + (1 - k/m) ablated`` at every destination and the model
    run on from them; mean over prompts.

    The right Riemann sum, as MIB's code (alpha = k/m, k = 1..m: the clean end is a step, the
    ablated end is not), so one step is EAP exactly. The sign is EAP's and patching's (the
    metric change of ablating the edge). Each edge integrates along its own block's
    interpolation; MIB's code averages every edge's gradient over every block's interpolation,
    including blocks past its destination, whose constant outputs there cut gradient paths.
    On the engine, block N's interpolation is the circuit with N's out-edges at weight 1 - k/m
    (:func:`interpolation_rows`), whose alpha-gradient on those edges is exactly the product
    above: 1 + (m - 1) x blocks patched passes, each with its backward pass, per minibatch."""
    model, graph = ctx.model, ctx.graph
    engine = PatchingEngine(model, graph)
    mean = ctx.source_means(engine)
    alpha, owner = interpolation_rows(graph, steps, model.device, model.dtype)
    batches = list(iter_batches(ctx.task, ctx.batch_size, model.device))
    rows = rows or gradient_rows(ctx, max(b.clean.numel() for b in batches))
    chunks = list(zip(alpha.split(rows), owner.split(rows), strict=True))
    total = torch.zeros(graph.n_edges, device=model.device, dtype=torch.float64)
    for i, b in enumerate(batches):
        ablated = engine.ablated_sources(ctx.ablation, b.corrupted, mean)
        metric_fn = ctx.metric_fn(b)
        for j, (weights, reads) in enumerate(chunks):
            ctx.check_stop()
            grads = engine.circuit_gradients(b.clean, ablated, weights, metric_fn)
            total += (grads * reads).sum(0).double() * len(b)
            ctx.report((i * len(chunks) + j + 1) / (len(batches) * len(chunks)), "scoring edges")
    return (total / (steps * len(ctx.task))).to(model.dtype)


def score_eap_ig_act(ctx: MethodContext, params: EAPIGActParams) -> MethodResult:
    return MethodResult(activation_ig_scores(ctx, params.ig_steps))
