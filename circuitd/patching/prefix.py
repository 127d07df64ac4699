"""Passes from a cached prefix: one patched pass of a circuit is kept (``cached_pass``),
and circuits that agree with it on the edges into the first blocks start at a later
block (``run_from``), skipping blocks that no destination reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch

from circuitd.edges import DestGroup, EdgeGraph
from circuitd.models.adapter import HookFn
from circuitd.patching.engine import BufferSink, EngineCore, dest_hooks, source_hooks


@lru_cache(maxsize=256)
def _block_out_edges(graph: EdgeGraph, layer: int) -> torch.Tensor:
    """Indices of the edges out of block ``layer``'s sources (heads and MLP)."""
    _, src, _, _ = graph.edge_table
    lo = graph.head_source(layer, 0)
    hi = lo + graph.shape.n_heads + (0 if graph.shape.attn_only else 1)
    return torch.tensor([i for i, s in enumerate(src) if lo <= s < hi], dtype=torch.long)


class _ChunkStack:
    """Differences ``ablated - current`` of the sources computed in one pass, kept as the
    chunks the hooks deliver (``[k, C, B, P, D]``) and contracted chunk by chunk, so no
    stack is concatenated and skipped sources (difference 0) cost nothing."""

    def __init__(self, ablated: torch.Tensor, n_circuits: int):
        self.ablated = ablated  # [S', B, P, D]: the sources from this pass on
        self.c = n_circuits
        self.chunks: list[tuple[int, torch.Tensor]] = []
        self.n = 0

    def add(self, current: torch.Tensor) -> None:
        """``current [k, C*B, P, D]``: the next k sources' outputs."""
        k = current.shape[0]
        cur = current.reshape(k, self.c, -1, *current.shape[2:])
        self.chunks.append((self.n, self.ablated[self.n : self.n + k].unsqueeze(1) - cur))
        self.n += k

    def skip(self, k: int) -> None:
        self.n += k

    def contract(self, w: torch.Tensor) -> torch.Tensor | None:
        """``sum_s w[c, m, s] * diff[s, c]`` ``[C, M, B, P, D]`` over the first
        ``w.shape[-1]`` sources (``w [C, P, M, S]`` in a position-aware graph: each position
        weighed apart); None when no chunk contributes."""
        spec = "cpms,scbpd->cmbpd" if w.ndim == 4 else "cms,scbpd->cmbpd"
        n = w.shape[-1]
        if n > self.n:
            raise RuntimeError(f"destination reads {n} sources but only {self.n} are computed")
        out = None
        for lo, chunk in self.chunks:
            hi = min(n, lo + chunk.shape[0])
            if hi <= lo or not bool(w[..., lo:hi].any()):
                continue
            part = torch.einsum(spec, w[..., lo:hi], chunk[: hi - lo])
            out = part if out is None else out + part
        return out


@dataclass
class CachedPass:
    """One patched pass of a batch, kept so that passes can start at any layer.

    A circuit that agrees with ``alpha`` on every edge into the destinations before layer
    ``l`` computes the same as this pass up to block ``l``: :meth:`PatchingEngine.run_from`
    starts there.
    """

    alpha: torch.Tensor | None  # [n_edges] edges ablated in this pass; None: none
    ablated: torch.Tensor  # [S, B, P, D] ablated source values
    diff: torch.Tensor  # [S, B, P, D] ablated minus each source's output in this pass
    resid: list[torch.Tensor]  # [B, P, D] entering each block, then the final residual (L + 1)


def _contract_rows(w: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
    """``sum_s w[c, m, s] * diff[s]`` as ``[C, M, B, P, D]`` for weights ``w [C, M, S]`` and
    sources ``diff [S, B, P, D]`` shared by all rows. Rows usually differ from the first in a
    few sources only, so the first row is contracted in full and the rest as differences.
    Position-aware weights ``w [C, P, M, S]`` are contracted per position in one product."""
    if w.ndim == 4:
        return torch.einsum("cpms,sbpd->cmbpd", w, diff)
    flat = diff.flatten(1)  # [S, N]
    base = (w[0] @ flat).unsqueeze(0)  # [1, M, N]
    dw = w - w[:1]
    cols = dw.flatten(0, 1).any(0).nonzero().squeeze(1)
    if cols.numel() == 0:
        out = base.expand(w.shape[0], -1, -1)
    else:
        out = base + torch.einsum("cms,sn->cmn", dw[..., cols], flat[cols])
    return out.reshape(*w.shape[:2], *diff.shape[1:])


class PrefixPasses(EngineCore):
    """The engine's passes that start at any block from a :class:`CachedPass`."""

    def cached_pass(
        self, tokens: torch.Tensor, ablated: torch.Tensor, alpha: torch.Tensor | None = None
    ) -> CachedPass:
        """The pass that :meth:`run_from` starts from, of the circuit ``alpha [n_edges]``
        (default: every edge kept): source outputs and the residual stream entering every
        block. One unpatched pass, and one patched pass when ``alpha`` ablates any edge."""
        m = self.model
        sources = self.source_buffer(tokens)
        resid: dict[str, torch.Tensor] = {}
        names = [m.hook_resid_pre(layer) for layer in range(self.graph.shape.n_layers)]
        names.append(m.hook_final_resid())

        def grab(name: str) -> HookFn:
            return lambda a: resid.__setitem__(name, a.detach())

        sink = BufferSink(sources)
        with torch.no_grad():
            with m.shared_head_inputs():
                hooks = source_hooks(m, self.graph, sink) + [(n, grab(n)) for n in names]
                m.run(tokens, hooks, logits=False)
            clean = CachedPass(None, ablated, ablated - sources, [resid[n] for n in names])
            if alpha is None or not bool(alpha.any()):
                return clean
            sink.n = 1  # the input is the same in every circuit; the rest is recorded again
            hooks = source_hooks(m, self.graph, sink)[1:] + [(n, grab(n)) for n in names]
            self._run_from(clean, 0, alpha.to(self.model.device).unsqueeze(0), hooks)
        kept = alpha.detach().to(self.model.device, self.model.dtype).clone()
        return CachedPass(kept, ablated, ablated - sources, [resid[n] for n in names])

    def run_from(self, start: CachedPass, layer: int, alpha: torch.Tensor) -> torch.Tensor:
        """Logits ``[C, B, P, V]`` of the patched model, as :meth:`run` gives them, computed
        from block ``layer`` on (``layer = n_layers``: the logits destination alone).

        Every circuit in ``alpha [C, n_edges]`` must agree with ``start`` on the edges into
        the destinations before ``layer``: the pass up to that block is then ``start``'s.
        The sources before ``layer`` are ``start``'s, so their terms use ``start.diff``
        without a circuit axis; only the sources computed in this pass are stacked per
        circuit.
        """
        return self._run_from(start, layer, alpha, [])

    def _run_from(
        self, start: CachedPass, layer: int, alpha: torch.Tensor, extra: list[tuple[str, HookFn]]
    ) -> torch.Tensor:
        """:meth:`run_from` with ``extra`` hooks placed before the patching ones.

        A block whose sources are ablated on every outgoing edge in every circuit is not
        run: no destination reads those outputs, so the residual stream takes their
        ablated values (and the block's attention bias) from ``start`` instead."""
        with self.patched_passes():
            return self._run_blocks_from(start, layer, alpha, extra)

    def _run_blocks_from(
        self, start: CachedPass, layer: int, alpha: torch.Tensor, extra: list[tuple[str, HookFn]]
    ) -> torch.Tensor:
        """The body of :meth:`_run_from`, inside :meth:`patched_passes`."""
        graph = self.graph
        g_all = graph.groups
        first = next(g for g in g_all if g.kind == "logits" or g.layer >= layer)
        alpha = alpha.to(self.model.dtype)
        per_position = (graph.n_positions, graph.n_base_edges)  # the edges into a block, at every position
        before = alpha.reshape(-1, *per_position)[..., : first.offset]
        fixed = start.alpha.reshape(per_position)[:, : first.offset] if start.alpha is not None else None
        if bool(before.any()) if fixed is None else not bool((before == fixed.to(alpha)).all()):
            raise ValueError(f"run_from({layer}): circuits differ from the cached pass before that layer")
        c = alpha.shape[0]
        n_layers = graph.shape.n_layers
        n0 = graph.head_source(layer, 0) if layer < n_layers else graph.n_sources
        stack = _ChunkStack(start.ablated[n0:], c)

        def delta(g: DestGroup, x: int) -> torch.Tensor | None:
            w = graph.part_view(alpha, g, x) if g.kind == "attn" else graph.group_view(alpha, g).unsqueeze(-2)
            # w: [C, M, S] ([C, P, M, S] position-aware), M the rows of the hook point's head axis
            # (1 for an MLP or the logits)
            if not bool(w.any()):
                return None
            out = _contract_rows(w[..., :n0], start.diff[:n0])  # [C, M, B, P, D]
            if g.n_src > n0:
                later = stack.contract(w[..., n0:])
                out = out if later is None else out + later
            return out.permute(0, 2, 3, 1, 4) if g.kind == "attn" else out.squeeze(1)

        def add(g: DestGroup, x: int, act: torch.Tensor) -> torch.Tensor:
            d = delta(g, x)
            return act if d is None else act + d.reshape(act.shape)

        src_hooks, dst_hooks = self._hooks_by_block(stack.add, add)
        resid = start.resid[layer]
        x = resid.unsqueeze(0).expand(c, *resid.shape).reshape(-1, *resid.shape[1:])
        hooks = list(extra)
        m = layer
        while m < n_layers:
            lo = graph.head_source(m, 0)
            hi = lo + graph.shape.n_heads + (0 if graph.shape.attn_only else 1)
            if not extra and bool(alpha[:, _block_out_edges(graph, m)].all()):  # nobody reads block m
                x = x + (start.resid[m + 1] - start.resid[m] + start.diff[lo:hi].sum(0)).repeat(c, 1, 1)
                stack.skip(hi - lo)
                m += 1
                continue
            end = m
            while end < n_layers and (extra or not bool(alpha[:, _block_out_edges(graph, end)].all())):
                end += 1
            for b in range(m, end):
                hooks += src_hooks[b] + dst_hooks[b]
            if end == n_layers:
                hooks += dst_hooks[n_layers]
                logits = self.model.run_blocks(x, m, hooks)
                return logits.reshape(c, *resid.shape[:2], -1)
            x = self.model.run_blocks(x, m, hooks, stop=end)
            hooks = []
            m = end
        d = delta(g_all[-1], 0)  # the logits alone: their destination hook is in the last block
        x = x if d is None else x + d.reshape(x.shape)
        logits = self.model.run_blocks(x, n_layers, [])
        return logits.reshape(c, *resid.shape[:2], -1)

    def _hooks_by_block(
        self, sink: Callable, add: Callable[[DestGroup, int, torch.Tensor], torch.Tensor]
    ) -> tuple[list[list[tuple[str, HookFn]]], list[list[tuple[str, HookFn]]]]:
        """Source and destination hooks of every block (the logits' last among the
        destinations), in forward order; the input source is left out."""
        n_layers = self.graph.shape.n_layers
        per_layer = 1 if self.graph.shape.attn_only else 2
        src = source_hooks(self.model, self.graph, sink)[1:]
        src_by = [src[per_layer * b : per_layer * (b + 1)] for b in range(n_layers)]
        dst = dest_hooks(self.model, self.graph, add)
        dst_by: list[list[tuple[str, HookFn]]] = [[] for _ in range(n_layers + 1)]
        at = 0
        for g in self.graph.groups:
            k = 3 if g.kind == "attn" else 1
            dst_by[g.layer if g.kind != "logits" else n_layers] += dst[at : at + k]
            at += k
        return src_by, dst_by
