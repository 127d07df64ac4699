"""The order ACDC visits destination nodes in, which nodes still reach the logits, and
the inputless-node rule of the prefilter: the graph walk both ACDC paths share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from circuitd.edges import DestGroup, EdgeGraph, head_name, kv_name, mlp_name


@dataclass(frozen=True)
class DestNode:
    """A destination node and its incoming edges in test order."""

    name: str
    # node index (the source index; n_sources for the logits); for a key/value head of a
    # grouped graph, the query heads that read it
    node: int | tuple[int, ...]
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
        out.append(_attention_nodes(graph, by_kind[("attn", layer)], block))
    return out


def _attention_nodes(
    graph: EdgeGraph, g: DestGroup, block: Callable[[int, int], tuple[int, ...]]
) -> list[DestNode]:
    """The destination nodes of one attention layer, last head first, each head with its
    q, k, v edges; in a grouped graph each key/value head (with its k and v edges) follows
    the query heads of its group."""
    layer, r = g.layer, g.group_size if graph.kv_grouped else 1
    nodes = []
    for kv in reversed(range(g.n_heads // r)):
        heads = range(kv * r, (kv + 1) * r)
        for h in reversed(heads):
            edges: tuple[int, ...] = ()
            for x in range(1 if r > 1 else g.n_qkv):
                first, _ = g.part(x)
                edges += block(g.offset + (first + h) * g.n_src, g.n_src)
            nodes.append(DestNode(head_name(layer, h), graph.head_source(layer, h), layer, edges))
        if r > 1:
            edges = ()
            for x in (1, 2):
                first, _ = g.part(x)
                edges += block(g.offset + (first + kv) * g.n_src, g.n_src)
            reads = tuple(graph.head_source(layer, h) for h in heads)
            nodes.append(DestNode(kv_name(layer, kv), reads, layer, edges))
    return nodes


class Liveness:
    """Whether a node still has a kept outgoing edge (the logits always count as live)."""

    def __init__(self, graph: EdgeGraph):
        src = torch.tensor(graph.edge_table[1])
        order = torch.argsort(src, stable=True)
        counts = torch.bincount(src, minlength=len(graph.nodes)).tolist()
        self.out = list(torch.split(order, counts))
        self.logits = graph.n_sources

    def __call__(self, keep: torch.Tensor, node: int | tuple[int, ...]) -> bool:
        """Whether ``node`` (or any of several nodes: the readers of a key/value head) is live."""
        if isinstance(node, tuple):
            return any(self(keep, n) for n in node)
        return node == self.logits or bool(keep[self.out[node]].any())


def drop_inputless(graph: EdgeGraph, keep: torch.Tensor) -> torch.Tensor:
    """``keep`` without the outgoing edges of nodes that have no kept incoming edge, to a
    fixpoint. Exact under resample ablation: such a node reads every source's corrupted
    output, so it computes its own corrupted output, its ablated value, and its outgoing
    edges change nothing; ACDC would test each of them only to remove it."""
    src_t = torch.tensor(graph.edge_table[1])
    inc_edge, inc_node = (torch.tensor(t) for t in graph.dest_incidence)
    keep = keep.cpu().clone()
    while True:
        has_in = torch.bincount(inc_node[keep[inc_edge]], minlength=len(graph.nodes)) > 0
        has_in[0] = True  # the input has no incoming edges to lose
        new = keep & has_in[src_t]
        if torch.equal(new, keep):
            return keep
        keep = new
