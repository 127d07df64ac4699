"""From edge scores to a circuit: top-n or threshold, then dangling parts removed."""

from __future__ import annotations

from typing import cast

import torch

from circuitd.edges import EdgeGraph


def top_n(scores: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` edges of largest |score| (ties broken by edge order), as a bool mask."""
    n = max(0, min(int(n), scores.numel()))
    keep = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    order = torch.sort(scores.abs(), descending=True, stable=True).indices
    keep[order[:n]] = True
    return keep


def above_threshold(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    return scores.abs() >= threshold


def prune_dangling(graph: EdgeGraph, keep: torch.Tensor) -> torch.Tensor:
    """Drop, until nothing changes, nodes without incoming edges (except ``input``), nodes
    without outgoing edges (except ``logits``) and the edges that touch them."""
    src_t = torch.tensor(graph.edge_table[1], device=keep.device)
    # an edge into a key/value head reaches each query head of its group: it gives each an
    # incoming edge, and stays while any of them is alive
    inc_edge, inc_node = (torch.tensor(t, device=keep.device) for t in graph.dest_incidence)
    n_nodes = len(graph.nodes)
    keep = keep.clone()
    while True:
        has_in = torch.bincount(inc_node[keep[inc_edge]], minlength=n_nodes) > 0
        has_out = torch.bincount(src_t[keep], minlength=n_nodes) > 0
        has_in[0] = True  # input
        has_out[-1] = True  # logits
        alive = has_in & has_out
        reached = torch.zeros(keep.shape, dtype=torch.long, device=keep.device)
        reached.index_add_(0, inc_edge, alive[inc_node].long())
        new = keep & alive[src_t] & (reached > 0)
        if torch.equal(new, keep):
            return keep
        keep = new


def select(
    graph: EdgeGraph, scores: torch.Tensor, n: int | None = None, threshold: float | None = None
) -> torch.Tensor:
    """The circuit as a bool mask over edges: exactly one of ``n`` and ``threshold``."""
    if (n is None) == (threshold is None):
        raise ValueError("give exactly one of top_n and threshold")
    # exactly one is given, so threshold is set when n is not
    keep = top_n(scores, n) if n is not None else above_threshold(scores, float(cast(float, threshold)))
    return prune_dangling(graph, keep)
