"""The edge graph of a model: sources, destinations, stable names, mask layout.

Sources are ordered ``input, a0.h0 .. a0.h{H-1}, m0, a1.h0, ...``, so the sources that a
destination may read always form a prefix of that list. Destinations come in groups in
forward order (the heads' q/k/v inputs of a layer, the layer's MLP input, then the
logits); a group's edges are one contiguous block of the flat edge index, laid out as
``[qkv, head, source]`` for attention, ``[source]`` for an MLP or the logits. The flat
index is what every method scores and every mask covers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from circuitd.models.adapter import ModelShape

QKV = ("q", "k", "v")


def head_name(layer: int, head: int) -> str:
    return f"a{layer}.h{head}"


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

    @property
    def n_dest(self) -> int:
        return self.n_qkv * self.n_heads

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
        for layer in range(s.n_layers):
            attn = DestGroup(
                "attn", layer, 1 + layer * per_layer, offset, 3 if self.split_qkv else 1, s.n_heads
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
    def n_sources(self) -> int:
        return len(self.sources)

    @property
    def n_edges(self) -> int:
        return self.groups[-1].stop

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

    def dest_of(self, group: DestGroup, dest: int) -> tuple[int, str]:
        """(node index, destination name) of destination ``dest`` within ``group``."""
        if group.kind == "logits":
            return self.n_sources, "logits"
        if group.kind == "mlp":
            return self.mlp_source(group.layer), mlp_name(group.layer)
        qkv, head = divmod(dest, group.n_heads)
        name = head_name(group.layer, head)
        node = self.head_source(group.layer, head)
        return node, f"{name}<{QKV[qkv]}>" if self.split_qkv else name

    @cached_property
    def edge_table(self) -> tuple[list[str], list[int], list[int], list[str | None]]:
        """Per edge: canonical name, source node, destination node, q/k/v key (or None)."""
        names: list[str] = []
        src: list[int] = []
        dst: list[int] = []
        keys: list[str | None] = []
        for g in self.groups:
            for d in range(g.n_dest):
                node, dname = self.dest_of(g, d)
                key = QKV[d // g.n_heads] if g.kind == "attn" and self.split_qkv else None
                for s in range(g.n_src):
                    names.append(f"{self.sources[s]}->{dname}")
                    src.append(s)
                    dst.append(node)
                    keys.append(key)
        return names, src, dst, keys

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
        ``[..., n_qkv, n_heads, n_src]`` for attention and ``[..., n_src]`` otherwise."""
        block = masks[..., group.offset : group.stop]
        if group.kind == "attn":
            return block.reshape(*masks.shape[:-1], group.n_qkv, group.n_heads, group.n_src)
        return block


def count_edges(shape: ModelShape, split_qkv: bool = True) -> int:
    """The closed-form edge count (tests check it against the enumeration)."""
    L, H = shape.n_layers, shape.n_heads
    s = 3 if split_qkv else 1
    logits = 1 + L * H
    if shape.attn_only:
        return s * H * (L + H * L * (L - 1) // 2) + logits
    mlp_heads = H * L * (L - 1) // 2 if shape.parallel_attn_mlp else H * L * (L + 1) // 2
    mlp = L + mlp_heads + L * (L - 1) // 2
    return s * H * (L + (H + 1) * L * (L - 1) // 2) + mlp + logits + L
