"""The order ACDC visits destination nodes in, which nodes still reach the logits, and
the inputless-node rule of the prefilter: the graph walk both ACDC paths share."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitd.edges import EdgeGraph, head_name, mlp_name


@dataclass(frozen=True)
class DestNode:
    """A destination node and its incoming edges in test order."""

    name: str
    node: int  # node index (the source index; n_sources for the logits)
    start: int  # the block a pass for its tests starts at (n_layers: the logits alone)
    edges: tuple[int, ...]


def visit_order(graph: EdgeGraph) -> list[list[DestNode]]:
    """Destination nodes in visiting order, grouped in blocks whose nodes do not feed one
    another (the logits; an MLP; the heads of one layer), so each block's liveness is
    known when the block starts."""
    n_layers = graph.shape.n_layers
    by_kind = {(g.kind, g.layer): g for g in graph.groups}

    def block(offset: int, n_src: int) -> tuple[int, ...]:
        return tuple(offset + s for s in reversed(range(n_src)))

    logits = by_kind[("logits", -1)]
    out = [[DestNode("logits", graph.n_sources, n_layers, block(logits.offset, logits.n_src))]]
    for layer in reversed(range(n_layers)):
        mlp = by_kind.get(("mlp", layer))
        if mlp is not None:
            edges = block(mlp.offset, mlp.n_src)
            out.append([DestNode(mlp_name(layer), graph.mlp_source(layer), layer, edges)])
        g = by_kind[("attn", layer)]
        heads = []
        for h in reversed(range(g.n_heads)):
            edges = ()
            for x in range(g.n_qkv):
                edges += block(g.offset + (x * g.n_heads + h) * g.n_src, g.n_src)
            heads.append(DestNode(head_name(layer, h), graph.head_source(layer, h), layer, edges))
        out.append(heads)
    return out


class Liveness:
    """Whether a node still has a kept outgoing edge (the logits always count as live)."""

    def __init__(self, graph: EdgeGraph):
        src = torch.tensor(graph.edge_table[1])
        order = torch.argsort(src, stable=True)
        counts = torch.bincount(src, minlength=len(graph.nodes)).tolist()
        self.out = list(torch.split(order, counts))
        self.logits = graph.n_sources

    def __call__(self, keep: torch.Tensor, node: int) -> bool:
        return node == self.logits or bool(keep[self.out[node]].any())


def drop_inputless(graph: EdgeGraph, keep: torch.Tensor) -> torch.Tensor:
    """``keep`` without the outgoing edges of nodes that have no kept incoming edge, to a
    fixpoint. Exact under resample ablation: such a node reads every source's corrupted
    output, so it computes its own corrupted output, its ablated value, and its outgoing
    edges change nothing; ACDC would test each of them only to remove it."""
    _, src, dst, _ = graph.edge_table
    src_t, dst_t = torch.tensor(src), torch.tensor(dst)
    keep = keep.cpu().clone()
    while True:
        has_in = torch.bincount(dst_t[keep], minlength=len(graph.nodes)) > 0
        has_in[0] = True  # the input has no incoming edges to lose
        new = keep & has_in[src_t]
        if torch.equal(new, keep):
            return keep
        keep = new
