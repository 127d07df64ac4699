"""The engine's core: the hooks that hand over every source output and patch every
destination input, the ablated source values, and the patched forward pass of a batch of
circuits (``run``). The cached-prefix passes and the edge gradients build on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from circuitd.edges import DestGroup, EdgeGraph
from circuitd.models.adapter import HookFn, ModelAdapter
from circuitd.names import ABLATIONS


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


def source_hooks(model: ModelAdapter, graph: EdgeGraph, sink: Callable) -> list[tuple[str, HookFn]]:
    """Hooks that hand each source output ``[k, batch, pos, d_model]`` to ``sink``, in order."""
    hooks: list[tuple[str, HookFn]] = [(model.hook_input(), lambda a: sink(a.unsqueeze(0)))]
    for layer in range(graph.shape.n_layers):
        hooks.append((model.hook_head_z(layer), lambda z, layer=layer: sink(model.head_results(layer, z))))
        if not graph.shape.attn_only:
            hooks.append((model.hook_mlp_out(layer), lambda a: sink(a.unsqueeze(0))))
    return hooks


def dest_hooks(
    model: ModelAdapter, graph: EdgeGraph, add: Callable[[DestGroup, int, torch.Tensor], torch.Tensor]
) -> list[tuple[str, HookFn]]:
    """Hooks at every destination input; ``add(group, qkv, act)`` returns the new input.
    Attention inputs come ``[batch, pos, rows, d_model]`` with the rows of
    ``graph.part_view`` (k and v per key/value head when the graph groups them: run them
    inside :meth:`EngineCore.patched_passes`)."""
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


class BufferSink:
    """Writes successive source outputs into a preallocated ``[S, B, P, D]`` buffer."""

    def __init__(self, buffer: torch.Tensor):
        self.buffer = buffer
        self.n = 0

    def __call__(self, current: torch.Tensor) -> None:
        k = current.shape[0]
        self.buffer[self.n : self.n + k].copy_(current.detach())
        self.n += k


def clean_prefix(ablation: str, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor | None:
    """Per prompt, how many leading positions have every source's ablated value equal to
    its clean one (``[B]``, from tokens ``[B, P]``): under resample ablation, those before
    the corrupted prompt first differs (the model is causal); under the others, none (None)."""
    if ablation != "resample":
        return None
    differ = clean != corrupted
    first = differ.to(torch.uint8).argmax(1)
    return torch.where(differ.any(1), first, torch.full_like(first, differ.shape[1]))


class EngineCore:
    """The model and edge graph every pass runs on, the source values, and the patched
    forward pass."""

    def __init__(self, model: ModelAdapter, graph: EdgeGraph):
        if graph.shape != model.shape:
            raise ValueError("edge graph and model have different shapes")
        self.model = model
        self.graph = graph

    @contextmanager
    def patched_passes(self) -> Iterator[None]:
        """Passes whose destination hooks match the graph's layout: k/v inputs per
        key/value head or per query head (:meth:`ModelAdapter.kv_inputs`). The switch is the
        model's own state, like :meth:`ModelAdapter.shared_head_inputs`: one job runs on a
        loaded model at a time (a worker runs one job per process)."""
        with self.model.kv_inputs(self.graph.kv_grouped):
            yield

    # --- source values -------------------------------------------------------------------
    def source_outputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Every source's output ``[S, B, P, D]`` on an unpatched pass."""
        buffer = self.source_buffer(tokens)
        with torch.no_grad():
            if self.model.lean_pass_supported():
                self.model.lean_pass(tokens, sources=buffer)
            else:
                with self.model.shared_head_inputs():  # unpatched: no per-head copies
                    hooks = source_hooks(self.model, self.graph, BufferSink(buffer))
                    self.model.run(tokens, hooks, logits=False)
        return buffer

    def source_buffer(self, tokens: torch.Tensor) -> torch.Tensor:
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
        ``[C, n_edges]`` (0 keeps an edge, 1 ablates it; on a position-aware graph an edge at
        one position, so P must be the graph's positions). Returns ``[B, P, V]`` or
        ``[C, B, P, V]``. Differentiable in ``alpha``.
        """
        single = alpha.ndim == 1
        alpha = alpha.unsqueeze(0) if single else alpha
        c = alpha.shape[0]
        alpha = alpha.to(self.model.dtype)
        stack = _SourceStack(ablated, c)
        track = alpha.requires_grad
        positional = bool(self.graph.positions)
        if positional and tokens.shape[1] != self.graph.n_positions:
            raise ValueError(
                f"prompts of {tokens.shape[1]} tokens on a graph of {self.graph.n_positions} positions"
            )

        def add(g: DestGroup, x: int, act: torch.Tensor) -> torch.Tensor:
            if g.kind == "attn":
                w = self.graph.part_view(alpha, g, x)  # [C, heads or key/value heads, S]
            else:
                w = self.graph.group_view(alpha, g)
            if not track and not bool(w.any()):
                return act
            diff = stack.prefix(g.n_src)  # [S, C, B, P, D]
            at = "p" if positional else ""  # a position-aware graph weighs each position apart
            if g.kind == "attn":
                delta = torch.einsum(f"c{at}hs,scbpd->cbphd", w, diff)
            else:
                delta = torch.einsum(f"c{at}s,scbpd->cbpd", w, diff)
            return act + delta.reshape(act.shape)

        hooks = source_hooks(self.model, self.graph, stack.add)
        hooks += dest_hooks(self.model, self.graph, add)
        with self.patched_passes():
            logits = self.model.run(tokens.repeat(c, 1), hooks)
        logits = logits.reshape(c, *tokens.shape, -1)
        return logits[0] if single else logits
