"""The one patching engine (REFERENCE §2). Every edge method runs on it.

Edge weights ``alpha`` over the flat edge index say how much of each edge is ablated:
0 keeps the edge, 1 removes it. A destination's input becomes

    in_v = in_v(current) + sum_u alpha[u->v] * (ablated_u - current_u)

where ``current_u`` is source u's output in this very pass. Source outputs are collected
as the pass reaches them (``diff = ablated - current``), and each destination hook adds
its block of ``alpha`` contracted with that stack. ``alpha`` may carry a leading circuit
axis ``[C, n_edges]``: the batch is repeated C times and every circuit runs in one pass.

The gradient of a metric with respect to ``alpha`` at zero is edge attribution patching;
``edge_gradients`` computes it for every edge from the gradients at the destination
inputs, which costs one backward pass and one matrix product per destination group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from circuitd.edges import DestGroup, EdgeGraph
from circuitd.models.adapter import HookFn, ModelAdapter

ABLATIONS = ("resample", "zero", "mean")


class _SourceStack:
    """Source outputs of one pass, stacked as ``[n_src, C, B, P, D]`` in source order."""

    def __init__(self, ablated: torch.Tensor, n_circuits: int):
        self.ablated = ablated  # [S, B, P, D]
        self.c = n_circuits
        self.chunks: list[torch.Tensor] = []
        self.n = 0
        self._stacked: torch.Tensor | None = None

    def add(self, current: torch.Tensor) -> None:
        """``current [k, C*B, P, D]``: the next k sources' outputs."""
        k = current.shape[0]
        cur = current.reshape(k, self.c, -1, *current.shape[2:])
        self.chunks.append(self.ablated[self.n : self.n + k].unsqueeze(1) - cur)
        self.n += k
        self._stacked = None

    def prefix(self, n: int) -> torch.Tensor:
        if self._stacked is None or self._stacked.shape[0] != self.n:
            self._stacked = torch.cat(self.chunks) if len(self.chunks) > 1 else self.chunks[0]
        if n > self.n:
            raise RuntimeError(f"destination reads {n} sources but only {self.n} are computed")
        return self._stacked[:n]


def _source_hooks(model: ModelAdapter, graph: EdgeGraph, sink: Callable) -> list[tuple[str, HookFn]]:
    """Hooks that hand each source output ``[k, batch, pos, d_model]`` to ``sink``, in order."""
    hooks: list[tuple[str, HookFn]] = [(model.hook_input(), lambda a: sink(a.unsqueeze(0)))]
    for layer in range(graph.shape.n_layers):
        hooks.append((model.hook_head_z(layer), lambda z, layer=layer: sink(model.head_results(layer, z))))
        if not graph.shape.attn_only:
            hooks.append((model.hook_mlp_out(layer), lambda a: sink(a.unsqueeze(0))))
    return hooks


def _dest_hooks(
    model: ModelAdapter, graph: EdgeGraph, add: Callable[[DestGroup, int, torch.Tensor], torch.Tensor]
) -> list[tuple[str, HookFn]]:
    """Hooks at every destination input; ``add(group, qkv, act)`` returns the new input."""
    hooks: list[tuple[str, HookFn]] = []
    for g in graph.groups:
        if g.kind == "attn":
            for x, qkv in enumerate(("q", "k", "v")):
                hooks.append(
                    (model.hook_head_input(g.layer, qkv), lambda a, g=g, x=x: add(g, x, a))
                )
        elif g.kind == "mlp":
            hooks.append((model.hook_mlp_in(g.layer), lambda a, g=g: add(g, 0, a)))
        else:
            hooks.append((model.hook_final_resid(), lambda a, g=g: add(g, 0, a)))
    return hooks


class _BufferSink:
    """Writes successive source outputs into a preallocated ``[S, B, P, D]`` buffer."""

    def __init__(self, buffer: torch.Tensor):
        self.buffer = buffer
        self.n = 0

    def __call__(self, current: torch.Tensor) -> None:
        k = current.shape[0]
        self.buffer[self.n : self.n + k].copy_(current.detach())
        self.n += k


class _HeadProbe:
    """A zero ``[H, B, P, D]`` leaf added to a ``[B, P, H, D]`` head input."""

    def __init__(self, leaf: torch.Tensor):
        self.leaf = leaf

    def __radd__(self, act: torch.Tensor) -> torch.Tensor:
        return act + self.leaf.permute(1, 2, 0, 3)

    @property
    def grad(self) -> torch.Tensor:
        return self.leaf.grad


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
        ``w.shape[-1]`` sources; None when no chunk contributes."""
        n = w.shape[-1]
        if n > self.n:
            raise RuntimeError(f"destination reads {n} sources but only {self.n} are computed")
        out = None
        for lo, chunk in self.chunks:
            hi = min(n, lo + chunk.shape[0])
            if hi <= lo or not bool(w[..., lo:hi].any()):
                continue
            part = torch.einsum("cms,scbpd->cmbpd", w[..., lo:hi], chunk[: hi - lo])
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
    few sources only, so the first row is contracted in full and the rest as differences."""
    flat = diff.flatten(1)  # [S, N]
    base = (w[0] @ flat).unsqueeze(0)  # [1, M, N]
    dw = w - w[:1]
    cols = dw.flatten(0, 1).any(0).nonzero().squeeze(1)
    if cols.numel() == 0:
        out = base.expand(w.shape[0], -1, -1)
    else:
        out = base + torch.einsum("cms,sn->cmn", dw[..., cols], flat[cols])
    return out.reshape(*w.shape[:2], *diff.shape[1:])


def clean_prefix(ablation: str, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor | None:
    """Per prompt, how many leading positions have every source's ablated value equal to
    its clean one (``[B]``, from tokens ``[B, P]``): under resample ablation, those before
    the corrupted prompt first differs (the model is causal); under the others, none (None)."""
    if ablation != "resample":
        return None
    differ = clean != corrupted
    first = differ.to(torch.uint8).argmax(1)
    return torch.where(differ.any(1), first, torch.full_like(first, differ.shape[1]))


class PatchingEngine:
    """Runs a model with any set of edges ablated, for many circuits at once."""

    def __init__(self, model: ModelAdapter, graph: EdgeGraph):
        if graph.shape != model.shape:
            raise ValueError("edge graph and model have different shapes")
        self.model = model
        self.graph = graph

    # --- source values -------------------------------------------------------------------
    def source_outputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Every source's output ``[S, B, P, D]`` on an unpatched pass."""
        buffer = self._source_buffer(tokens)
        with torch.no_grad():
            if self.model.lean_pass_supported():
                self.model.lean_pass(tokens, sources=buffer)
            else:
                with self.model.shared_head_inputs():  # unpatched: no per-head copies
                    hooks = _source_hooks(self.model, self.graph, _BufferSink(buffer))
                    self.model.run(tokens, hooks, logits=False)
        return buffer

    def _source_buffer(self, tokens: torch.Tensor) -> torch.Tensor:
        shape = (self.graph.n_sources, *tokens.shape, self.graph.shape.d_model)
        return torch.empty(shape, device=self.model.device, dtype=self.model.dtype)

    def ablated_sources(
        self,
        ablation: str,
        corrupted: torch.Tensor,
        mean: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Ablated source values ``[S, B, P, D]`` for prompts shaped like ``corrupted``.

        ``resample``: outputs on the corrupted prompts; ``zero``: zeros; ``mean``: ``mean``
        (``[S, D]``, from :meth:`mean_sources`) at every position.
        """
        if ablation == "resample":
            return self.source_outputs(corrupted)
        shape = (self.graph.n_sources, *corrupted.shape, self.graph.shape.d_model)
        if ablation == "zero":
            return torch.zeros(shape, device=self.model.device, dtype=self.model.dtype)
        if ablation == "mean":
            if mean is None:
                raise ValueError("mean ablation needs the dataset mean of every source")
            return mean[:, None, None, :].expand(shape)
        raise ValueError(f"ablation: '{ablation}' is not one of {', '.join(ABLATIONS)}")

    def mean_sources(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Mean output ``[S, D]`` of every source over the real positions of ``(tokens,
        token_mask)`` batches (the corrupted prompts, by convention)."""
        total = None
        count = 0
        for tokens, mask in batches:
            out = self.source_outputs(tokens)  # [S, B, P, D]
            m = mask.to(out.dtype)[None, :, :, None]
            s = (out * m).sum((1, 2))
            total = s if total is None else total + s
            count += int(mask.sum())
        assert total is not None
        return total / count

    # --- patched forward -------------------------------------------------------------------
    def run(self, tokens: torch.Tensor, ablated: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Logits of the patched model.

        ``tokens [B, P]``, ``ablated [S, B, P, D]``, ``alpha [n_edges]`` or
        ``[C, n_edges]`` (0 keeps an edge, 1 ablates it). Returns ``[B, P, V]`` or
        ``[C, B, P, V]``. Differentiable in ``alpha``.
        """
        single = alpha.ndim == 1
        alpha = alpha.unsqueeze(0) if single else alpha
        c = alpha.shape[0]
        alpha = alpha.to(self.model.dtype)
        stack = _SourceStack(ablated, c)
        track = alpha.requires_grad

        def add(g: DestGroup, x: int, act: torch.Tensor) -> torch.Tensor:
            w = self.graph.group_view(alpha, g)
            if g.kind == "attn":
                w = w[:, x if w.shape[1] == 3 else 0]  # [C, H, S]
            if not track and not bool(w.any()):
                return act
            diff = stack.prefix(g.n_src)  # [S, C, B, P, D]
            if g.kind == "attn":
                delta = torch.einsum("chs,scbpd->cbphd", w, diff)
            else:
                delta = torch.einsum("cs,scbpd->cbpd", w, diff)
            return act + delta.reshape(act.shape)

        hooks = _source_hooks(self.model, self.graph, stack.add)
        hooks += _dest_hooks(self.model, self.graph, add)
        logits = self.model.run(tokens.repeat(c, 1), hooks)
        logits = logits.reshape(c, *tokens.shape, -1)
        return logits[0] if single else logits

    def cached_pass(
        self, tokens: torch.Tensor, ablated: torch.Tensor, alpha: torch.Tensor | None = None
    ) -> CachedPass:
        """The pass that :meth:`run_from` starts from, of the circuit ``alpha [n_edges]``
        (default: every edge kept): source outputs and the residual stream entering every
        block. One unpatched pass, and one patched pass when ``alpha`` ablates any edge."""
        m = self.model
        sources = self._source_buffer(tokens)
        resid: dict[str, torch.Tensor] = {}
        names = [m.hook_resid_pre(layer) for layer in range(self.graph.shape.n_layers)]
        names.append(m.hook_final_resid())

        def grab(name: str) -> HookFn:
            return lambda a: resid.__setitem__(name, a.detach())

        sink = _BufferSink(sources)
        with torch.no_grad():
            with m.shared_head_inputs():
                hooks = _source_hooks(m, self.graph, sink) + [(n, grab(n)) for n in names]
                m.run(tokens, hooks, logits=False)
            clean = CachedPass(None, ablated, ablated - sources, [resid[n] for n in names])
            if alpha is None or not bool(alpha.any()):
                return clean
            sink.n = 1  # the input is the same in every circuit; the rest is recorded again
            hooks = _source_hooks(m, self.graph, sink)[1:] + [(n, grab(n)) for n in names]
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
        graph = self.graph
        g_all = graph.groups
        first = next(g for g in g_all if g.kind == "logits" or g.layer >= layer)
        alpha = alpha.to(self.model.dtype)
        before = alpha[:, : first.offset]
        fixed = start.alpha[: first.offset] if start.alpha is not None else None
        if bool(before.any()) if fixed is None else not bool((before == fixed.to(alpha)).all()):
            raise ValueError(f"run_from({layer}): circuits differ from the cached pass before that layer")
        c = alpha.shape[0]
        n_layers = graph.shape.n_layers
        n0 = graph.head_source(layer, 0) if layer < n_layers else graph.n_sources
        stack = _ChunkStack(start.ablated[n0:], c)

        def delta(g: DestGroup, x: int) -> torch.Tensor | None:
            w = graph.group_view(alpha, g)
            w = w[:, x if w.shape[1] == 3 else 0] if g.kind == "attn" else w.unsqueeze(1)  # [C, M, S]
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
        src = _source_hooks(self.model, self.graph, sink)[1:]
        src_by = [src[per_layer * b : per_layer * (b + 1)] for b in range(n_layers)]
        dst = _dest_hooks(self.model, self.graph, add)
        dst_by: list[list[tuple[str, HookFn]]] = [[] for _ in range(n_layers + 1)]
        at = 0
        for g in self.graph.groups:
            k = 3 if g.kind == "attn" else 1
            dst_by[g.layer if g.kind != "logits" else n_layers] += dst[at : at + k]
            at += k
        return src_by, dst_by

    # --- attribution -----------------------------------------------------------------------
    def edge_gradients(
        self,
        tokens: torch.Tensor,
        ablated: torch.Tensor,
        metric_fn: Callable[[torch.Tensor], torch.Tensor],
        baseline: torch.Tensor | None = None,
        steps: int = 1,
        answer_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``d metric / d alpha`` at alpha = 0 for every edge ``[n_edges]`` (EAP).

        ``metric_fn`` reads the logits ``[B, P, V]``; with ``answer_pos [B]`` it reads only
        those at each prompt's answer position ``[B, V]``, and only those are computed (the
        unembedding of every position is most of a pass's cost for a large vocabulary).

        With ``steps > 1`` and a ``baseline`` input embedding (the corrupted prompts'),
        the gradients at each destination are averaged over inputs interpolated from the
        baseline to the clean input (EAP-IG, inputs variant); the activation difference
        is always the clean one. ``steps = 1`` is exactly EAP.

        The clean step (t = 1) runs first and records the clean source outputs, so every
        step's gradients are contracted with ``ablated - clean`` at once and none are kept.
        """
        if steps > 1 and baseline is None:
            raise ValueError("EAP-IG needs the baseline (corrupted) embedding")
        lean = self.model.lean_pass_supported()
        shared = self.model.shared_head_input_grads_supported()
        diff = self._source_buffer(tokens)
        scores = torch.zeros(self.graph.n_edges, device=diff.device, dtype=diff.dtype)
        workspace: list[torch.Tensor] = []  # one head-input gradient buffer, reused by every layer
        for i, k in enumerate((steps, *range(1, steps))):
            if lean:
                grads = self._dest_grads_lean(tokens, metric_fn, k / steps, baseline, diff, answer_pos)
            else:
                inputs = self._input_hooks(k / steps, baseline, diff)
                if shared:
                    with self.model.shared_head_inputs():
                        grads = self._dest_grads_shared(tokens, metric_fn, inputs, answer_pos)
                else:
                    grads = self._dest_grads_split(tokens, metric_fn, inputs, answer_pos)
            if i == 0:  # after the clean step: the buffer becomes ablated - clean
                torch.sub(ablated, diff, out=diff)
            self._contract(grads, diff, scores, workspace)
        return scores / steps

    def _contract(
        self, grads: list, diff: torch.Tensor, scores: torch.Tensor, workspace: list[torch.Tensor]
    ) -> None:
        """Add ``sum_{b,p,d} diff_u * grad_v`` for every edge u->v to ``scores``.

        Attention gradients come per head input ``[H, B, P, D]`` for each of q, k, v, or
        per layer as ``(layer, grads and values at q/k/v, resid_pre)``, turned into the
        q/k/v head-input gradients of every head here, one layer at a time, in
        ``workspace``. One-row groups (an MLP, the logits) ride along with the next
        product: their sources are a prefix of the next group's, so they are read once.
        """
        flat = diff.flatten(1)  # [S, B*P*D]
        n_pos, d = flat.shape[1] // diff.shape[-1], diff.shape[-1]
        it = iter(grads)
        riders: list[tuple[DestGroup, torch.Tensor]] = []  # one-row groups waiting for a product
        for g in self.graph.groups:
            if g.kind != "attn":
                riders.append((g, next(it).reshape(-1)))
                continue
            grad = next(it)
            rows = 3 * g.n_heads
            if isinstance(grad, tuple):  # q, k and v of every head at once
                layer, qkv_grads, qkv_acts, resid = grad
                n = rows + len(riders)
                if not workspace or workspace[0].shape[0] < n:
                    workspace[:] = [diff.new_empty(n, n_pos * d)]
                buf = workspace[0][:n]
                head_rows = buf[:rows].view(rows, n_pos, d)
                self.model.head_input_grads(layer, qkv_grads, qkv_acts, resid, out=head_rows)
                for i, (_, row) in enumerate(riders):
                    buf[rows + i].copy_(row)
            else:  # [H, B, P, D] for each of q, k, v
                parts = [grad, next(it), next(it)]
                buf = torch.cat([p.reshape(g.n_heads, -1) for p in parts] + [r[None] for _, r in riders])
            block = buf @ flat[: g.n_src].T  # [rows + riders, S]
            self._add_riders(riders, block[rows:], scores)
            block = block[:rows]
            if g.n_qkv == 1:
                block = block.reshape(3, g.n_heads, g.n_src).sum(0)
            scores[g.offset : g.stop] += block.reshape(-1)
        if riders:
            last = riders[-1][0]  # the logits: every source
            block = torch.stack([r for _, r in riders]) @ flat[: last.n_src].T
            self._add_riders(riders, block, scores)

    @staticmethod
    def _add_riders(
        riders: list[tuple[DestGroup, torch.Tensor]], block: torch.Tensor, scores: torch.Tensor
    ) -> None:
        """Scores of one-row groups from their rows of a product over a longer source prefix."""
        for (g, _), row in zip(riders, block, strict=True):
            scores[g.offset : g.stop] += row[: g.n_src]
        riders.clear()

    def _input_hooks(
        self, t: float, baseline: torch.Tensor | None, clean: torch.Tensor
    ) -> list[tuple[str, HookFn]]:
        """The input at interpolation ``t``; at t = 1 the clean input, whose source outputs
        are written to ``clean`` on the way."""
        if t == 1:
            return _source_hooks(self.model, self.graph, _BufferSink(clean))
        return [(self.model.hook_input(), lambda a: baseline + t * (a - baseline))]

    def _backward_metric(
        self, tokens: torch.Tensor, hooks: list[tuple[str, HookFn]], metric_fn: Callable,
        answer_pos: torch.Tensor | None,
    ) -> None:
        """One pass with ``hooks`` and the backward pass of its metric."""
        with torch.enable_grad():
            final = self.model.run(tokens, hooks, logits=False)
            self._metric_of_final(final, metric_fn, answer_pos).backward()

    def _metric_of_final(
        self, final: torch.Tensor, metric_fn: Callable, answer_pos: torch.Tensor | None
    ) -> torch.Tensor:
        """The metric of the logits of the final residual stream ``[B, P, D]``, at each
        prompt's answer position only when ``answer_pos`` is given."""
        if answer_pos is None:
            return metric_fn(self.model.logits_of(final))
        rows = torch.arange(final.shape[0], device=final.device)
        return metric_fn(self.model.logits_of(final[rows, answer_pos]))

    def _dest_grads_lean(
        self, tokens: torch.Tensor, metric_fn: Callable, t: float, baseline: torch.Tensor | None,
        clean: torch.Tensor, answer_pos: torch.Tensor | None,
    ) -> list:
        """As :meth:`_dest_grads_shared`, on the adapter's lean pass: the gradients are
        taken at its tensors (no hook points, no probes). At ``t`` = 1 the clean pass, whose
        source outputs are written to ``clean``; else the input interpolated from
        ``baseline`` (EAP-IG)."""
        m = self.model
        input_fn = None if t == 1 else (lambda a: baseline + t * (a - baseline))
        with torch.enable_grad():
            lp = m.lean_pass(tokens, sources=clean if t == 1 else None, input_fn=input_fn, track=True)
            metric = self._metric_of_final(lp.final, metric_fn, answer_pos)
            grads = torch.autograd.grad(
                metric, [*lp.qkv, *lp.mlp_in, lp.final], allow_unused=True, materialize_grads=True
            )
        n = len(lp.qkv)
        out: list = []
        for g in self.graph.groups:
            if g.kind == "attn":  # [B, P, 3, H, E] -> [3, B, P, H, E]
                qkv_grads = grads[g.layer].permute(2, 0, 1, 3, 4)
                out.append((g.layer, qkv_grads, lp.qkv[g.layer].detach().permute(2, 0, 1, 3, 4),
                            lp.resid_pre[g.layer]))
            else:
                out.append(grads[n + g.layer] if g.kind == "mlp" else grads[-1])
        return out

    def _dest_grads_split(
        self, tokens: torch.Tensor, metric_fn: Callable, hooks: list[tuple[str, HookFn]],
        answer_pos: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Gradients at every destination input, read from zero probes added to the
        per-head inputs (any architecture)."""
        probes = self._probes(tokens.shape)
        hooks = hooks + _dest_hooks(self.model, self.graph, lambda g, x, a: a + probes[g][x])
        self._backward_metric(tokens, hooks, metric_fn, answer_pos)
        return [p.grad for g in self.graph.groups for p in probes[g]]

    def _dest_grads_shared(
        self, tokens: torch.Tensor, metric_fn: Callable, hooks: list[tuple[str, HookFn]],
        answer_pos: torch.Tensor | None = None,
    ) -> list:
        """As :meth:`_dest_grads_split`, on the plain model: at alpha = 0 every head reads
        the same residual stream, so the per-head input gradients follow from those at q, k
        and v through the first LayerNorm (the adapter's ``head_input_grads``, applied in
        :meth:`_contract`): attention groups come as ``(layer, gradients at q/k/v, values
        at q/k/v, resid_pre)``."""
        m = self.model
        probes: dict[str, torch.Tensor] = {}
        acts: dict[str, torch.Tensor] = {}
        resid: dict[int, torch.Tensor] = {}

        def probe(a: torch.Tensor, name: str) -> torch.Tensor:
            acts[name] = a.detach()
            probes[name] = torch.zeros_like(a, requires_grad=True)
            return a + probes[name]

        def keep_resid(a: torch.Tensor, layer: int) -> None:
            resid[layer] = a.detach()

        hooks = list(hooks)
        for g in self.graph.groups:
            if g.kind == "attn":
                hooks.append((m.hook_resid_pre(g.layer), lambda a, lay=g.layer: keep_resid(a, lay)))
                names = [m.hook_head_qkv(g.layer, x) for x in ("q", "k", "v")]
            else:
                names = [m.hook_mlp_in(g.layer) if g.kind == "mlp" else m.hook_final_resid()]
            hooks += [(n, lambda a, n=n: probe(a, n)) for n in names]
        self._backward_metric(tokens, hooks, metric_fn, answer_pos)
        out: list = []
        for g in self.graph.groups:
            if g.kind == "attn":
                names = [m.hook_head_qkv(g.layer, x) for x in ("q", "k", "v")]
                grads = torch.stack([probes[n].grad for n in names])
                out.append((g.layer, grads, torch.stack([acts[n] for n in names]), resid[g.layer]))
            else:
                name = m.hook_mlp_in(g.layer) if g.kind == "mlp" else m.hook_final_resid()
                out.append(probes[name].grad)
        return out

    def _probes(self, tokens_shape: torch.Size) -> dict[DestGroup, list[torch.Tensor]]:
        """Zero tensors added at every destination input, to read gradients there."""
        b, p = tokens_shape
        d = self.graph.shape.d_model
        kw = dict(device=self.model.device, dtype=self.model.dtype, requires_grad=True)
        out: dict[DestGroup, list[torch.Tensor]] = {}
        for g in self.graph.groups:
            if g.kind == "attn":  # laid out [H, B, P, D] so the gradient reshapes for free
                heads = [torch.zeros(g.n_heads, b, p, d, **kw) for _ in range(3)]
                out[g] = [_HeadProbe(t) for t in heads]
            else:
                out[g] = [torch.zeros(b, p, d, **kw)]
        return out
