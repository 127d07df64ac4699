"""Edge attribution patching: ``d metric / d alpha`` at alpha = 0 for every edge
(``edge_gradients``; EAP, and EAP-IG over interpolated inputs), from the gradients at the
destination inputs: one backward pass and one matrix product per destination group; and
at any edge weights, for several circuits at once (``circuit_gradients``; EAP-IG over
activations)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict, cast

import torch

from circuitd.edges import DestGroup
from circuitd.models.adapter import HookFn
from circuitd.patching.engine import BufferSink, EngineCore, dest_hooks, source_hooks


class _HeadProbe:
    """A zero ``[H, B, P, D]`` leaf added to a ``[B, P, H, D]`` head input (H: heads, or
    key/value heads for grouped k/v inputs)."""

    def __init__(self, leaf: torch.Tensor):
        self.leaf = leaf

    def __radd__(self, act: torch.Tensor) -> torch.Tensor:
        return act + self.leaf.permute(1, 2, 0, 3)

    @property
    def grad(self) -> torch.Tensor | None:
        return self.leaf.grad


class _ProbeKw(TypedDict):
    device: torch.device
    dtype: torch.dtype
    requires_grad: bool


class EdgeGradients(EngineCore):
    """The engine's gradients of a metric with respect to every edge's weight."""

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
        diff = self.source_buffer(tokens)
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

    def circuit_gradients(
        self,
        tokens: torch.Tensor,
        ablated: torch.Tensor,
        alpha: torch.Tensor,
        metric_fn: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """``d metric_c / d alpha[c]`` ``[C, n_edges]`` for circuits ``alpha [C, n_edges]``
        at any edge weights, not only at zero as :meth:`edge_gradients` (EAP-IG over
        activations evaluates them part-way between clean and ablated). One patched pass of
        the C circuits (:meth:`run`) and its backward pass; ``metric_fn`` maps the logits
        ``[C, B, P, V]`` to one metric per circuit ``[C]``."""
        with torch.enable_grad():
            weights = alpha.detach().to(self.model.device, self.model.dtype).requires_grad_(True)
            metric_fn(self.run(tokens, ablated, weights)).sum().backward()
        return cast(torch.Tensor, weights.grad)

    def _contract(
        self, grads: list, diff: torch.Tensor, scores: torch.Tensor, workspace: list[torch.Tensor]
    ) -> None:
        """Add ``sum_{b,p,d} diff_u * grad_v`` for every edge u->v to ``scores`` (in a
        position-aware graph, ``sum_{b,d}`` for every edge at every position p).

        Attention gradients come per head input ``[H, B, P, D]`` for q and ``[K, B, P, D]``
        for k and v (``K`` key/value heads when the graph groups them, else ``H``), or
        per layer as ``(layer, grads and values at q/k/v, resid_pre)``, turned into the
        q/k/v head-input gradients of every head here, one layer at a time, in
        ``workspace``. One-row groups (an MLP, the logits) ride along with the next
        product: their sources are a prefix of the next group's, so they are read once.
        """
        n_pos, d = diff.shape[1] * diff.shape[2], diff.shape[-1]
        product = self._product(diff)
        by_position = scores.view(self.graph.n_positions, self.graph.n_base_edges)
        it = iter(grads)
        riders: list[tuple[DestGroup, torch.Tensor]] = []  # one-row groups waiting for a product
        for g in self.graph.groups:
            if g.kind != "attn":
                riders.append((g, next(it).reshape(-1)))
                continue
            grad = next(it)
            rows = g.n_dest if g.n_qkv == 3 else 3 * g.n_heads  # unsplit: summed over q, k, v below
            if isinstance(grad, tuple):  # q, k and v of every head at once (never grouped k/v:
                # the shared-input gradients are not offered for grouped-query models)
                layer, qkv_grads, qkv_acts, resid = grad
                n = rows + len(riders)
                if not workspace or workspace[0].shape[0] < n:
                    workspace[:] = [diff.new_empty(n, n_pos * d)]
                buf = workspace[0][:n]
                head_rows = buf[:rows].view(rows, n_pos, d)
                self.model.head_input_grads(layer, qkv_grads, qkv_acts, resid, out=head_rows)
                for i, (_, row) in enumerate(riders):
                    buf[rows + i].copy_(row)
            else:  # [rows, B, P, D] for each of q, k, v: heads, or key/value heads for k and v
                parts = [grad, next(it), next(it)]
                buf = torch.cat([p.reshape(p.shape[0], -1) for p in parts] + [r[None] for _, r in riders])
            block = product(buf, g.n_src)  # [positions, rows + riders, S]
            self._add_riders(riders, block[:, rows:], by_position)
            block = block[:, :rows]
            if g.n_qkv == 1:
                block = block.reshape(-1, 3, g.n_heads, g.n_src).sum(1)
            by_position[:, g.offset : g.stop] += block.reshape(by_position.shape[0], -1)
        if riders:
            last = riders[-1][0]  # the logits: every source
            block = product(torch.stack([r for _, r in riders]), last.n_src)
            self._add_riders(riders, block, by_position)

    def _product(self, diff: torch.Tensor) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """``product(rows [R, B*P*D], n)``: each row against the first n sources of ``diff
        [S, B, P, D]``, ``[1, R, n]`` summed over everything (one matrix product), or
        ``[P, R, n]`` per position in a position-aware graph."""
        flat = diff.flatten(1)  # [S, B*P*D]
        if not self.graph.positions:
            return lambda rows, n: (rows @ flat[:n].T)[None]
        _, b, p, d = diff.shape
        per_position = diff.permute(2, 0, 1, 3).reshape(p, diff.shape[0], b * d)  # [P, S, B*D]

        def product(rows: torch.Tensor, n: int) -> torch.Tensor:
            r = rows.view(-1, b, p, d).permute(2, 0, 1, 3).reshape(p, -1, b * d)
            return r @ per_position[:, :n].transpose(1, 2)

        return product

    @staticmethod
    def _add_riders(
        riders: list[tuple[DestGroup, torch.Tensor]], block: torch.Tensor, scores: torch.Tensor
    ) -> None:
        """Scores ``[positions, n_base_edges]`` of one-row groups from their rows of a product
        over a longer source prefix (``block [positions, riders, S]``)."""
        for i, (g, _) in enumerate(riders):
            scores[:, g.offset : g.stop] += block[:, i, : g.n_src]
        riders.clear()

    def _input_hooks(
        self, t: float, baseline: torch.Tensor | None, clean: torch.Tensor
    ) -> list[tuple[str, HookFn]]:
        """The input at interpolation ``t``; at t = 1 the clean input, whose source outputs
        are written to ``clean`` on the way."""
        if t == 1:
            return source_hooks(self.model, self.graph, BufferSink(clean))
        assert baseline is not None  # t < 1 only for steps > 1, which requires the baseline
        return [(self.model.hook_input(), lambda a: baseline + t * (a - baseline))]

    def _backward_metric(
        self, tokens: torch.Tensor, hooks: list[tuple[str, HookFn]], metric_fn: Callable,
        answer_pos: torch.Tensor | None,
    ) -> None:
        """One pass with ``hooks`` and the backward pass of its metric."""
        with torch.enable_grad(), self.patched_passes():
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
        hooks = hooks + dest_hooks(self.model, self.graph, lambda g, x, a: a + probes[g][x])
        self._backward_metric(tokens, hooks, metric_fn, answer_pos)
        # the backward pass reaches every probe (each feeds the metric), so each has a gradient
        return cast(list[torch.Tensor], [p.grad for g in self.graph.groups for p in probes[g]])

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
                grads = torch.stack(cast(list[torch.Tensor], [probes[n].grad for n in names]))
                out.append((g.layer, grads, torch.stack([acts[n] for n in names]), resid[g.layer]))
            else:
                name = m.hook_mlp_in(g.layer) if g.kind == "mlp" else m.hook_final_resid()
                out.append(probes[name].grad)
        return out

    def _probes(self, tokens_shape: torch.Size) -> dict[DestGroup, list[torch.Tensor] | list[_HeadProbe]]:
        """Zero tensors added at every destination input, to read gradients there."""
        b, p = tokens_shape
        d = self.graph.shape.d_model
        kw = _ProbeKw(device=self.model.device, dtype=self.model.dtype, requires_grad=True)
        out: dict[DestGroup, list[torch.Tensor] | list[_HeadProbe]] = {}
        for g in self.graph.groups:
            if g.kind == "attn":  # laid out [rows, B, P, D] so the gradient reshapes for free
                heads = [torch.zeros(g.part(x)[1], b, p, d, **kw) for x in range(3)]
                out[g] = [_HeadProbe(t) for t in heads]
            else:
                out[g] = [torch.zeros(b, p, d, **kw)]
        return out
