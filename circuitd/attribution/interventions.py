"""Checks of an attribution graph by intervention: scale some nodes' outputs, and compare the
read-out changes its edges predict with those the replacement model gives."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import Tensor

from circuitd.attribution.attribute import source_vectors, target_readouts
from circuitd.attribution.replacement import AttributionError, ReplacementContext
from circuitd.names import AttributionConvention
from graphs.attribution_graph import Node


@dataclass
class InterventionCheck:
    """One target's change under an intervention on some nodes, predicted and measured."""

    target: Node
    predicted: float  # from the graph's edges, feature effects carried through its feature edges
    actual: float  # the replacement model with features live (attention and norms frozen)
    predicted_direct: float  # direct edges only (features held at their recorded values)
    actual_direct: float  # the frozen-feature model: equals predicted_direct when the graph is exact


def predict_change(
    adjacency: np.ndarray, nodes: Sequence[Node], chosen: Sequence[int], scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Each node's predicted read-out change ``(through features, direct)`` when the ``chosen``
    nodes' outputs are multiplied by ``scale`` (0 ablates).

    A source whose output scales by ``1 + r`` moves each target by ``r·A[t, s]``. A feature that is
    not chosen moves its own output in proportion to its pre-activation change (it is linear where
    it is active), so ``r_f = Δpre_f / activation_f`` and the effects are carried along the
    feature→feature edges, solving ``r = r₀ + M r`` with ``M[f, s] = A[f, s] / activation_f``.
    """
    A = np.asarray(adjacency, dtype=np.float64)
    n = len(nodes)
    r0 = np.zeros(n)
    r0[list(chosen)] = scale - 1.0
    direct = A @ r0
    free = np.array([x.kind == "feature" and i not in set(chosen) for i, x in enumerate(nodes)])
    act = np.array([x.activation if x.kind == "feature" and x.activation else 1.0 for x in nodes])
    M = np.where(free[:, None], A / act[:, None], 0.0)
    r = np.linalg.solve(np.eye(n) - M, r0)
    return A @ r, direct


@torch.no_grad()
def intervene(
    ctx: ReplacementContext,
    nodes: Sequence[Node],
    chosen: Sequence[int],
    scale: float,
    convention: AttributionConvention = "circuitd",
) -> tuple[Tensor, Tensor]:
    """Measured read-out changes of ``nodes`` ``(live features, frozen features)`` when the chosen
    nodes' outputs are multiplied by ``scale``: tokens and errors through their vectors (those of
    the graph's ``convention``), features clamped to ``scale × activation`` in the live pass."""
    chosen_nodes = [nodes[i] for i in chosen]
    out, emb, _ = source_vectors(ctx, chosen_nodes, convention)
    r = scale - 1.0
    is_feature = torch.tensor([x.kind == "feature" for x in chosen_nodes], device=out.device)
    embed_delta, out_delta = emb.sum(0) * r, out.sum(0) * r
    live_out = out[~is_feature].sum(0) * r  # a clamped feature writes through its decoder itself
    # a feature node has its layer and index (Node.__post_init__)
    clamp = cast(
        list[tuple[int, int, int, float]],
        [
            (x.layer, x.pos, x.index, float(ctx.activations[x.layer, x.pos, x.index]) * scale)
            for x in chosen_nodes
            if x.kind == "feature"
        ],
    )
    base_live = target_readouts(ctx, nodes, ctx.forward("live"))
    base_frozen = target_readouts(ctx, nodes, ctx.forward("frozen"))
    live = target_readouts(ctx, nodes, ctx.forward("live", embed_delta, live_out, clamp=clamp)) - base_live
    frozen = target_readouts(ctx, nodes, ctx.forward("frozen", embed_delta, out_delta)) - base_frozen
    return live, frozen


def check_interventions(
    ctx: ReplacementContext,
    adjacency: np.ndarray,
    nodes: Sequence[Node],
    chosen: Sequence[int],
    scale: float = 0.0,
    convention: AttributionConvention = "circuitd",
) -> list[InterventionCheck]:
    """Predicted (from ``adjacency``) against measured change of every logit node when the chosen
    nodes are scaled; ``adjacency`` may be a pruned graph's (its missing edges are zeros)."""
    if not chosen:
        raise AttributionError("validate: choose at least one node")
    if len(set(chosen)) != len(chosen):
        raise AttributionError("validate: a node is chosen twice")
    if any(nodes[i].kind == "logit" for i in chosen):
        raise AttributionError(
            "validate: logit nodes have no output to scale; choose features, errors or tokens"
        )
    through, direct = predict_change(adjacency, nodes, chosen, scale)
    live, frozen = intervene(ctx, nodes, chosen, scale, convention)
    targets = [i for i, x in enumerate(nodes) if x.kind in ("feature", "logit")]
    col = {i: j for j, i in enumerate(targets)}
    return [
        InterventionCheck(
            nodes[i], float(through[i]), float(live[col[i]]), float(direct[i]), float(frozen[col[i]])
        )
        for i in targets
        if nodes[i].kind == "logit"
    ]
