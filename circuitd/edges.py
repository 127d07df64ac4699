"""The edge graph of a model: sources, destinations, stable names, mask layout.

Sources are ordered ``input, a0.h0 .. a0.h{H-1}, m0, a1.h0, ...``, so the sources that a
destination may read always form a prefix of that list. Destinations come in groups in
forward order (the heads' q/k/v inputs of a layer, the layer's MLP input, then the
logits); a group's edges are one contiguous block of the flat edge index, laid out as
``[destination, source]``: for attention the destinations are the q inputs of every head,
then the k inputs, then the v inputs (``[qkv, head, source]``), for an MLP or the logits
the one input. The flat index is what every method scores and every mask covers.

Grouped-query attention (``n_key_value_heads`` < ``n_heads``): by default (``kv_heads=
"grouped"``) the k and v destinations are the key/value heads, ``a{l}.kv{g}<k>`` and
``a{l}.kv{g}<v>``, one input each that every query head of group g reads (heads ``g*r ..
g*r+r-1``, ``r = n_heads // n_key_value_heads``: TransformerLens's ``repeat_interleave``
order), so an attention block has ``n_heads + 2 * n_key_value_heads`` destinations per
source. ``kv_heads="per-query"`` gives every query head its own k and v input, as
TransformerLens's ``ungroup_grouped_query_attention`` (and EAP-IG) do: the model run as
multi-head attention with each key/value head's weights repeated. Without the q/k/v split
a head's one input feeds its q, k and v together and cannot be shared: such graphs are
always per query head.

Position-aware graphs (``positions``: one name per token position, for tasks whose prompts
share a template) split every edge by the position of its source's output: edge ``e`` at
position ``p`` carries ``u``'s output at ``p`` into ``v``'s input at ``p`` (a residual stream
only reaches its own position; attention moves information across positions inside a head).
The flat index is then position-major, ``p * n_base_edges + e``, named ``<edge>@<p>``; the
groups keep their offsets within one position, and :meth:`EdgeGraph.group_view` /
:meth:`EdgeGraph.part_view` give the position axis before the destination rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

    from circuitd.models.adapter import ModelShape

QKV = ("q", "k", "v")
KVHeads = Literal["grouped", "per-query"]
KV_HEADS: tuple[KVHeads, ...] = ("grouped", "per-query")


def head_name(layer: int, head: int) -> str:
    return f"a{layer}.h{head}"


def kv_name(layer: int, group: int) -> str:
    """A key/value head of a grouped-query layer, as a destination (``a{l}.kv{g}``)."""
    return f"a{layer}.kv{group}"


def kv_grouped(shape: ModelShape, split_qkv: bool, kv_heads: KVHeads) -> bool:
    """Whether k/v destinations are per key/value head: a grouped-query model, q/k/v split
    (one shared input per head cannot be grouped) and ``kv_heads="grouped"``."""
    if kv_heads not in KV_HEADS:
        raise ValueError(f"kv_heads: '{kv_heads}' is not one of {', '.join(KV_HEADS)}")
    n_kv = shape.n_key_value_heads or shape.n_heads
    return split_qkv and kv_heads == "grouped" and n_kv < shape.n_heads


def mlp_name(layer: int) -> str:
    return f"m{layer}"


@dataclass(frozen=True)
class DestGroup:
    """One block of destinations that a single hook point feeds."""

    kind: str  # "attn", "mlp" or "logits"
    layer: int  # -1 for logits
    n_src: int  # the sources readable here: a prefix of the source list
    offset: int  # first edge of the block in the flat index
    n_qkv: int = 1  # 3 when q/k/v are split (attention only)
    n_heads: int = 1  # heads of the layer (attention only)
    n_kv: int = 0  # k and v destinations each when split (0: n_heads; fewer when grouped)

    @property
    def kv_rows(self) -> int:
        return self.n_kv or self.n_heads

    @property
    def n_dest(self) -> int:
        return self.n_heads + 2 * self.kv_rows if self.n_qkv == 3 else self.n_heads

    def part(self, x: int) -> tuple[int, int]:
        """(first destination, count) of the q (0), k (1) or v (2) inputs of an attention
        group; without the q/k/v split every part is the heads' one input."""
        if self.n_qkv == 1 or x == 0:
            return 0, self.n_heads
        return self.n_heads + (x - 1) * self.kv_rows, self.kv_rows

    def qkv_of(self, dest: int) -> tuple[int, int]:
        """(part 0/1/2, index within the part: head or key/value head) of ``dest``."""
        if self.n_qkv == 1 or dest < self.n_heads:
            return 0, dest
        x, i = divmod(dest - self.n_heads, self.kv_rows)
        return 1 + x, i

    @property
    def group_size(self) -> int:
        """Query heads that read one k/v destination (1 unless grouped)."""
        return self.n_heads // self.kv_rows

    @property
    def n_edges(self) -> int:
        return self.n_dest * self.n_src

    @property
    def stop(self) -> int:
        return self.offset + self.n_edges


@dataclass(frozen=True)
class EdgeGraph:
    """All edges of one architecture, with names and the flat mask layout."""

    shape: ModelShape
    split_qkv: bool = True
    kv_heads: KVHeads = "grouped"  # only grouped-query models differ (module docstring)
    positions: tuple[str, ...] = ()  # position-aware: one name per token position (module docstring)
    groups: tuple[DestGroup, ...] = field(init=False)
    sources: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        s = self.shape
        sources = ["input"]
        for layer in range(s.n_layers):
            sources += [head_name(layer, h) for h in range(s.n_heads)]
            if not s.attn_only:
                sources.append(mlp_name(layer))
        groups: list[DestGroup] = []
        offset = 0
        per_layer = s.n_heads + (0 if s.attn_only else 1)
        n_kv = s.n_key_value_heads if self.kv_grouped else 0
        for layer in range(s.n_layers):
            attn = DestGroup(
                "attn", layer, 1 + layer * per_layer, offset, 3 if self.split_qkv else 1, s.n_heads, n_kv
            )
            groups.append(attn)
            offset = attn.stop
            if not s.attn_only:
                n_src = attn.n_src + (0 if s.parallel_attn_mlp else s.n_heads)
                mlp = DestGroup("mlp", layer, n_src, offset)
                groups.append(mlp)
                offset = mlp.stop
        groups.append(DestGroup("logits", -1, len(sources), offset))
        object.__setattr__(self, "sources", tuple(sources))
        object.__setattr__(self, "groups", tuple(groups))

    @property
    def kv_grouped(self) -> bool:
        """Whether k/v destinations are per key/value head (see :func:`kv_grouped`)."""
        return kv_grouped(self.shape, self.split_qkv, self.kv_heads)

    def layout(self) -> dict[str, object]:
        """What a reader of the edge names needs to know (recorded in graph files): the
        q/k/v split, the k/v layout and the head counts that map a key/value head to its
        query heads."""
        s = self.shape
        layout: dict[str, object] = {
            "split_qkv": self.split_qkv,
            "kv_heads": "grouped" if self.kv_grouped else "per-query",
            "n_heads": s.n_heads,
            "n_key_value_heads": s.n_key_value_heads or s.n_heads,
        }
        if self.positions:
            layout["positions"] = list(self.positions)
        return layout

    @property
    def n_sources(self) -> int:
        return len(self.sources)

    @property
    def n_base_edges(self) -> int:
        """Edges of one position (all edges when the graph is not position-aware)."""
        return self.groups[-1].stop

    @property
    def n_positions(self) -> int:
        """Positions the edges are split by (1 when the graph is not position-aware)."""
        return max(1, len(self.positions))

    @property
    def n_edges(self) -> int:
        return self.n_base_edges * self.n_positions

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node: the sources in order, then ``logits``; a node's index is its source
        index (``logits`` last)."""
        return (*self.sources, "logits")

    def head_source(self, layer: int, head: int) -> int:
        per_layer = self.shape.n_heads + (0 if self.shape.attn_only else 1)
        return 1 + layer * per_layer + head

    def mlp_source(self, layer: int) -> int:
        return self.head_source(layer, 0) + self.shape.n_heads

    def dest_of(self, group: DestGroup, dest: int) -> tuple[tuple[int, ...], str]:
        """(node indices, destination name) of destination ``dest`` within ``group``: one
        node, or for a key/value head every query head of its group."""
        if group.kind == "logits":
            return (self.n_sources,), "logits"
        if group.kind == "mlp":
            return (self.mlp_source(group.layer),), mlp_name(group.layer)
        x, i = group.qkv_of(dest)
        if not self.split_qkv:
            return (self.head_source(group.layer, i),), head_name(group.layer, i)
        if x > 0 and self.kv_grouped:
            r = group.group_size
            nodes = tuple(self.head_source(group.layer, h) for h in range(i * r, (i + 1) * r))
            return nodes, f"{kv_name(group.layer, i)}<{QKV[x]}>"
        return (self.head_source(group.layer, i),), f"{head_name(group.layer, i)}<{QKV[x]}>"

    @cached_property
    def edge_table(self) -> tuple[list[str], list[int], list[int], list[str | None]]:
        """Per edge: canonical name, source node, destination node, q/k/v key (or None).
        The destination node of an edge into a key/value head is its group's first query
        head; :attr:`dest_incidence` has every node an edge reaches."""
        names: list[str] = []
        src: list[int] = []
        dst: list[int] = []
        keys: list[str | None] = []
        for g in self.groups:
            for d in range(g.n_dest):
                nodes, dname = self.dest_of(g, d)
                key = QKV[g.qkv_of(d)[0]] if g.kind == "attn" and self.split_qkv else None
                for s in range(g.n_src):
                    names.append(f"{self.sources[s]}->{dname}")
                    src.append(s)
                    dst.append(nodes[0])
                    keys.append(key)
        if self.positions:
            n = len(self.positions)
            names = [f"{name}@{p}" for p in range(n) for name in names]
            src, dst, keys = src * n, dst * n, keys * n
        return names, src, dst, keys

    @cached_property
    def dest_incidence(self) -> tuple[list[int], list[int]]:
        """(edge, node) pairs: every destination node each edge reaches (one pair per edge,
        except r pairs for an edge into a key/value head of r query heads). Node-level
        views (dangling nodes, liveness, paths) read destinations from these."""
        edges: list[int] = []
        nodes: list[int] = []
        for g in self.groups:
            for d in range(g.n_dest):
                reached, _ = self.dest_of(g, d)
                first = g.offset + d * g.n_src
                for node in reached:
                    edges += range(first, first + g.n_src)
                    nodes += [node] * g.n_src
        if self.positions:
            base = self.n_base_edges
            edges = [p * base + e for p in range(len(self.positions)) for e in edges]
            nodes = nodes * len(self.positions)
        return edges, nodes

    @property
    def edge_names(self) -> list[str]:
        return self.edge_table[0]

    @cached_property
    def edge_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.edge_names)}

    def index_of(self, names: list[str]) -> list[int]:
        """Flat indices of edge names; unknown names raise KeyError naming the edge."""
        out = []
        for n in names:
            if n not in self.edge_index:
                raise KeyError(f"edge '{n}' is not in this model's edge graph")
            out.append(self.edge_index[n])
        return out

    def group_view(self, masks: torch.Tensor, group: DestGroup) -> torch.Tensor:
        """The block of ``masks [..., n_edges]`` that feeds ``group``, shaped
        ``[..., n_dest, n_src]`` for attention and ``[..., n_src]`` otherwise; in a
        position-aware graph ``[..., n_positions, n_dest, n_src]`` and ``[..., n_positions, n_src]``."""
        if self.positions:
            masks = masks.reshape(*masks.shape[:-1], len(self.positions), self.n_base_edges)
        block = masks[..., group.offset : group.stop]
        if group.kind == "attn":
            return block.reshape(*block.shape[:-1], group.n_dest, group.n_src)
        return block

    def part_view(self, masks: torch.Tensor, group: DestGroup, x: int) -> torch.Tensor:
        """The edges of ``masks [..., n_edges]`` into the q (0), k (1) or v (2) inputs of
        attention ``group``: ``[..., heads or key/value heads, n_src]``, in the order of the
        hook point's head axis (``[..., n_positions, heads, n_src]`` when position-aware)."""
        first, n = group.part(x)
        return self.group_view(masks, group)[..., first : first + n, :]


def count_edges(shape: ModelShape, split_qkv: bool = True, kv_heads: KVHeads = "grouped") -> int:
    """The closed-form edge count (tests check it against the enumeration)."""
    L, H = shape.n_layers, shape.n_heads
    if kv_grouped(shape, split_qkv, kv_heads):
        dests = H + 2 * shape.n_key_value_heads  # attention destinations per source
    else:
        dests = 3 * H if split_qkv else H
    logits = 1 + L * H
    if shape.attn_only:
        return dests * (L + H * L * (L - 1) // 2) + logits
    mlp_heads = H * L * (L - 1) // 2 if shape.parallel_attn_mlp else H * L * (L + 1) // 2
    mlp = L + mlp_heads + L * (L - 1) // 2
    return dests * (L + (H + 1) * L * (L - 1) // 2) + mlp + logits + L
