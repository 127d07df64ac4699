"""Attribution graphs on a local replacement model (Ameisen et al. 2025; REFERENCE §6).

One prompt, one real forward pass: :func:`record` hooks the model and keeps what the local
replacement model freezes. :class:`ReplacementContext` then runs that replacement model with
our own forward pass built from the model's weights, so every frozen quantity is explicit:

* attention patterns (``hook_pattern``) are constants, so attention is linear in its values;
* every LayerNorm scale (``ln1``, ``ln2``, ``ln_final``) is a constant ``sigma = sqrt(var + eps)``
  computed from the recorded LayerNorm *input* (the adapter fuses LayerNorm, so ``hook_scale``
  does not fire); the mean subtraction stays, it is linear;
* each MLP output is ``transcoder reconstruction + error`` with ``error = mlp_out −
  reconstruction`` a constant, so at the recorded point the forward pass reproduces the real
  model's logits. ``ln2`` does not enter: transcoders read ``hook_mlp_in``, before ``ln2``.

With the feature activations also held fixed (``features="frozen"``) the model is affine in the
residual stream; that is the linear model the edges live in. The transcoders' skip connections
read the residual stream and stay inside it; biases (``b_V``, ``b_O``, LayerNorm shifts,
``b_dec``, ``b_U``) are constants that no node owns.

Nodes (order features, errors, tokens, logits, as :mod:`graphs.attribution` requires):

* features ``(layer, pos, feature)`` with activation > 0, sorted by layer, position, index;
* errors ``(layer, pos)``, sorted by layer then position;
* tokens ``pos``: the token's vector is what enters block 0 (``blocks.0.hook_resid_pre``), the
  token embedding *plus* the positional embedding (for rotary models, the token embedding);
* logits at the last position: the top tokens until cumulative probability reaches ``p``
  (default 0.95, at most 10), or the token ids given.

Position 0 (BOS) has no feature or error nodes: its features and errors are set to zero as
sources (the forward pass itself is untouched), so their contribution is credited to no node.

``A[target, source]`` = the source's vector (feature: ``activation × decoder row``, every
decoder of a cross-layer feature; error: its error vector; token: its vector) carried through
the frozen linear model to the target's input and dotted with the target's read vector: a
feature's encoder row (its pre-activation, also for JumpReLU and TopK), or a logit's demeaned
unembedding column ``W_U[:, k] − mean_j W_U[:, j]`` after the frozen final LayerNorm. Computed
with batched backward passes, one target per batch row. Only features and logits have rows;
logits have no columns. A feature feeds only features of later layers (its output enters the
residual stream after its own layer's MLP input) and, through the causal patterns, only equal
or later positions; these zeros come out of the backward pass, they are not imposed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from circuitd.models.adapter import ModelAdapter
from circuitd.transcoders import TranscoderSet
from graphs.attribution import (
    AttributionGraph,
    Node,
    influence_of_normalized,
    kind_mask,
    logit_weights,
    normalized_abs,
)

FeatureMode = Literal["live", "frozen"]


class AttributionError(ValueError):
    """A model, transcoder set or request that attribution cannot handle; one-line message."""


def check_supported(adapter: ModelAdapter, transcoders: TranscoderSet) -> None:
    """Refuse architectures our explicit forward pass does not reproduce, rather than attribute
    through the wrong maths."""
    cfg = adapter.model.cfg
    problems = []
    if cfg.attn_only:
        problems.append("attention-only (no MLPs to replace)")
    if cfg.parallel_attn_mlp:
        problems.append("parallel attention and MLP")
    if cfg.normalization_type not in ("LN", "LNPre"):
        problems.append(f"normalization {cfg.normalization_type!r} (need LN or LNPre)")
    if getattr(cfg, "n_key_value_heads", None):
        problems.append("grouped-query attention")
    if getattr(cfg, "use_normalization_before_and_after", False):
        problems.append("normalization after sub-blocks")
    if (getattr(cfg, "output_logits_soft_cap", None) or 0) > 0:
        problems.append("logit soft cap")
    if transcoders.n_layers != cfg.n_layers or transcoders.d_model != cfg.d_model:
        problems.append(
            f"transcoders for {transcoders.n_layers} layers of d_model {transcoders.d_model}, model has "
            f"{cfg.n_layers} of {cfg.d_model}"
        )
    if (transcoders.feature_input_hook, transcoders.feature_output_hook) != ("hook_mlp_in", "hook_mlp_out"):
        problems.append("transcoders must read hook_mlp_in and write hook_mlp_out")
    if problems:
        raise AttributionError(f"attribution: unsupported setup: {'; '.join(problems)}")


def _sigma(x: Tensor, eps: float) -> Tensor:
    """LayerNorm denominator ``sqrt(var + eps)`` (biased variance, as ``F.layer_norm``)."""
    return (x.var(-1, unbiased=False) + eps).sqrt()


def _frozen_norm(module: Any, x: Tensor, sigma: Tensor) -> Tensor:
    """LayerNorm with its scale frozen at ``sigma [P]``: affine in ``x [..., P, D]``."""
    y = (x - x.mean(-1, keepdim=True)) / sigma[:, None]
    return y * module.w + module.b if hasattr(module, "w") else y


@dataclass
class FrozenRun:
    """What one pass of the replacement model gives: every MLP input ``[..., L, P, D]``, the
    final residual ``[..., P, D]`` and the logits ``[..., P, V]``."""

    mlp_in: Tensor
    final_resid: Tensor
    logits: Tensor


@dataclass
class ReplacementContext:
    """Everything recorded from one real forward pass of one prompt, and the local replacement
    model built on it. Tensors have no batch dimension; ``L`` layers, ``P`` positions."""

    adapter: ModelAdapter
    transcoders: TranscoderSet
    tokens: Tensor  # [P]
    embed: Tensor  # [P, D]: blocks.0.hook_resid_pre, the token vectors
    resid_pre: Tensor  # [L, P, D]: ln1 inputs
    mlp_in: Tensor  # [L, P, D]
    mlp_out: Tensor  # [L, P, D]
    patterns: Tensor  # [L, H, P, P]
    ln1_scale: Tensor  # [L, P]
    ln2_scale: Tensor  # [L, P]
    final_resid: Tensor  # [P, D]
    ln_final_scale: Tensor  # [P]
    logits: Tensor  # [P, V]: the real model's
    activations: Tensor  # [L, P, d_tc]: transcoder activations at the recorded MLP inputs
    reconstruction: Tensor  # [L, P, D]
    errors: Tensor  # [L, P, D]: mlp_out − reconstruction

    @property
    def n_layers(self) -> int:
        return self.mlp_in.shape[0]

    @property
    def n_pos(self) -> int:
        return self.mlp_in.shape[1]

    def decoder_vectors(self, layer: int, feature: int) -> Tensor:
        """What one unit of ``feature``'s activation writes into each MLP output ``[L, D]``
        (zero before its layer; cross-layer features write into every later layer)."""
        tc = self.transcoders
        out = torch.zeros(self.n_layers, tc.d_model, dtype=self.mlp_in.dtype, device=self.mlp_in.device)
        if tc.clt is not None:
            out[layer:] = tc.clt.W_dec[layer][feature]
        else:
            out[layer] = tc.transcoder(layer).W_dec[feature]
        return out

    def _feature_output(self, layer: int, acts: Sequence[Tensor]) -> Tensor:
        """Layer ``layer``'s reconstruction without skip, ``[..., P, D]``, from the activations
        ``acts[i] [..., P, d_tc]`` of layers ``0..layer``."""
        tc = self.transcoders
        if tc.clt is None:
            t = tc.transcoder(layer)
            return acts[layer] @ t.W_dec + t.b_dec
        out = tc.clt.b_dec[layer]
        for i in range(layer + 1):
            out = out + acts[i] @ tc.clt.W_dec[i][:, layer - i]
        return out

    def _skip(self, layer: int, x: Tensor) -> Tensor:
        tc = self.transcoders
        return tc.clt.skip(layer, x) if tc.clt is not None else tc.transcoder(layer).skip(x)

    def forward(
        self,
        features: FeatureMode = "frozen",
        embed_delta: Tensor | None = None,
        out_delta: Tensor | None = None,
        clamp: Sequence[tuple[int, int, int, float]] = (),
    ) -> FrozenRun:
        """The replacement model with frozen patterns and LayerNorm scales.

        ``features="live"``: activations recomputed by the transcoders from the MLP inputs (the
        local replacement model). ``"frozen"``: activations held at their recorded values (the
        linear model of the edges). ``embed_delta [..., P, D]`` is added to the token vectors and
        ``out_delta [..., L, P, D]`` to the MLP outputs; their leading dims batch the pass.
        ``clamp`` holds ``(layer, pos, feature, value)``: in a live pass those activations are set
        to ``value`` whatever their input (an intervention on a feature node).
        """
        if features not in ("live", "frozen"):
            raise ValueError(f"features: expected 'live' or 'frozen', got {features!r}")
        model = self.adapter.model
        lead: tuple[int, ...] = ()
        for d, k in ((embed_delta, 2), (out_delta, 3)):
            if d is not None:
                lead = torch.broadcast_shapes(lead, d.shape[:-k])
        resid = self.embed if embed_delta is None else self.embed + embed_delta
        resid = resid.expand(*lead, *self.embed.shape)
        mlp_ins: list[Tensor] = []
        acts: list[Tensor] = []
        for layer, block in enumerate(model.blocks):
            attn = block.attn
            x = _frozen_norm(block.ln1, resid, self.ln1_scale[layer])
            v = torch.einsum("...pd,hde->...phe", x, attn.W_V) + attn.b_V
            z = torch.einsum("hqk,...khe->...qhe", self.patterns[layer], v)
            resid = resid + torch.einsum("...qhe,hed->...qd", z, attn.W_O) + attn.b_O
            mlp_ins.append(resid)
            if features == "live":
                act = self.transcoders.encode(layer, resid)
                here = [(p, f, v) for lay, p, f, v in clamp if lay == layer]
                if here:
                    act = act.clone()
                    for p, f, v in here:
                        act[..., p, f] = v
                acts.append(act)
            else:  # constants: kept without the batch dims, broadcast when added
                acts.append(self.activations[layer])
            out = self._feature_output(layer, acts) + self._skip(layer, resid) + self.errors[layer]
            if out_delta is not None:
                out = out + out_delta[..., layer, :, :]
            resid = resid + out
        final = _frozen_norm(model.ln_final, resid, self.ln_final_scale)
        logits = final @ model.unembed.W_U + model.unembed.b_U
        return FrozenRun(torch.stack(mlp_ins, dim=-3), resid, logits)

    def pre_activations(self, mlp_in: Tensor) -> Tensor:
        """Every layer's pre-activations ``[..., L, P, d_tc]`` from MLP inputs ``[..., L, P, D]``."""
        return torch.stack(
            [self.transcoders.pre_activations(i, mlp_in[..., i, :, :]) for i in range(self.n_layers)], dim=-3
        )


@torch.no_grad()
def record(adapter: ModelAdapter, transcoders: TranscoderSet, tokens: Tensor) -> ReplacementContext:
    """Run the real model once on ``tokens [P]`` and keep what the replacement model freezes."""
    check_supported(adapter, transcoders)
    if tokens.ndim != 1 or tokens.numel() < 1:
        raise AttributionError("attribution: tokens must be one prompt [P] of at least one token")
    model = adapter.model
    n_layers = model.cfg.n_layers
    store: dict[str, Tensor] = {}

    def keep(name: str) -> tuple[str, Any]:
        def fn(act: Tensor) -> None:
            store[name] = act[0].detach().clone()

        return name, fn

    names = ["blocks.0.hook_resid_pre", f"blocks.{n_layers - 1}.hook_resid_post"]
    for layer in range(n_layers):
        names += [
            adapter.hook_resid_pre(layer),
            adapter.hook_mlp_in(layer),
            adapter.hook_mlp_out(layer),
            f"blocks.{layer}.attn.hook_pattern",
        ]
    tokens = tokens.to(adapter.device)
    logits = adapter.run(tokens[None], [keep(n) for n in dict.fromkeys(names)])[0]

    def stack(fmt: str) -> Tensor:
        return torch.stack([store[fmt.format(layer)] for layer in range(n_layers)])

    resid_pre = stack("blocks.{}.hook_resid_pre")
    mlp_in = stack("blocks.{}.hook_mlp_in")
    mlp_out = stack("blocks.{}.hook_mlp_out")
    final_resid = store[f"blocks.{n_layers - 1}.hook_resid_post"]
    tc = transcoders
    activations = torch.stack([tc.encode(i, mlp_in[i]) for i in range(n_layers)])
    reconstruction = torch.stack([tc.reconstruct(i, list(mlp_in)) for i in range(n_layers)])
    return ReplacementContext(
        adapter=adapter,
        transcoders=tc,
        tokens=tokens,
        embed=store["blocks.0.hook_resid_pre"],
        resid_pre=resid_pre,
        mlp_in=mlp_in,
        mlp_out=mlp_out,
        patterns=stack("blocks.{}.attn.hook_pattern"),
        ln1_scale=torch.stack([_sigma(resid_pre[i], b.ln1.eps) for i, b in enumerate(model.blocks)]),
        ln2_scale=torch.stack([_sigma(mlp_in[i], b.ln2.eps) for i, b in enumerate(model.blocks)]),
        final_resid=final_resid,
        ln_final_scale=_sigma(final_resid, model.ln_final.eps),
        logits=logits,
        activations=activations,
        reconstruction=reconstruction,
        errors=mlp_out - reconstruction,
    )


def select_logits(logits: Tensor, p: float = 0.95, max_logits: int = 10) -> tuple[list[int], list[float]]:
    """Top tokens of one position's ``logits [V]`` until cumulative probability reaches ``p``
    (at most ``max_logits``), with their probabilities."""
    probs = logits.double().softmax(-1)
    top = probs.topk(min(max_logits, probs.numel()))
    ids, ps = [], []
    total = 0.0
    for prob, idx in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        ids.append(int(idx))
        ps.append(float(prob))
        total += prob
        if total >= p:
            break
    return ids, ps


@dataclass
class Attribution:
    """The nodes and the full adjacency ``A[target, source]`` (float64) of one prompt, with the
    context they were computed in (its recorded tensors are the source vectors)."""

    context: ReplacementContext
    nodes: list[Node]
    adjacency: Tensor  # [n, n] float64
    backward_passes: int = 0

    def graph(self, prompt: str = "", meta: dict[str, Any] | None = None) -> AttributionGraph:
        return AttributionGraph(
            self.adjacency.cpu().numpy().astype(np.float64),
            self.nodes,
            self.context.n_layers,
            prompt,
            meta or {},
        )


def active_features(ctx: ReplacementContext) -> Tensor:
    """``(layer, pos, feature)`` rows ``[N, 3]`` of active features, position 0 excluded, sorted."""
    active = ctx.activations > 0
    active[:, 0] = False
    return active.nonzero()  # nonzero is row-major: layer, then pos, then feature


@torch.no_grad()
def build_nodes(
    ctx: ReplacementContext,
    logit_ids: Sequence[int] | None = None,
    p: float = 0.95,
    max_logits: int = 10,
    logit_diff: tuple[int, int] | None = None,
) -> list[Node]:
    """The graph's nodes in the required order (see the module docstring). Targets: the top
    logits up to probability ``p`` (at most ``max_logits``), or the tokens ``logit_ids``, or
    one logit-difference node ``logit_diff = (correct, incorrect)`` of weight 1."""
    feats = active_features(ctx)
    nodes = [
        Node(
            "feature",
            pos=int(pos),
            layer=int(layer),
            index=int(f),
            activation=float(ctx.activations[layer, pos, f]),
        )
        for layer, pos, f in feats.tolist()
    ]
    nodes += [
        Node("error", pos=pos, layer=layer) for layer in range(ctx.n_layers) for pos in range(1, ctx.n_pos)
    ]
    tok = ctx.adapter.tokenizer
    for pos, t in enumerate(ctx.tokens.tolist()):
        text = tok.decode([t]) if tok is not None else None
        nodes.append(Node("token", pos=pos, index=int(t), token=text))
    last = ctx.logits[-1]
    probs = last.double().softmax(-1)

    def text(i: int) -> str | None:
        return tok.decode([i]) if tok is not None else None

    if logit_diff is not None:
        if logit_ids is not None:
            raise AttributionError("attribution: give logit_ids or logit_diff, not both")
        good, bad = (int(i) for i in logit_diff)
        label = f"{text(good)} − {text(bad)}" if tok is not None else None
        return nodes + [Node("logit", pos=ctx.n_pos - 1, index=good, prob=1.0, token=label, contrast=bad)]
    if logit_ids is None:
        ids, ps = select_logits(last, p, max_logits)
    else:
        ids = [int(i) for i in logit_ids]
        ps = [float(probs[i]) for i in ids]
    nodes += [
        Node("logit", pos=ctx.n_pos - 1, index=i, prob=q, token=text(i)) for i, q in zip(ids, ps, strict=True)
    ]
    return nodes


def _readouts(ctx: ReplacementContext, run: FrozenRun, targets: Sequence[Node]) -> Tensor:
    """Each batch row's own target read-out ``[B]``: row b of ``run`` read by ``targets[b]``
    (a feature's pre-activation, a logit's demeaned logit at its position)."""
    vals = []
    for b, t in enumerate(targets):
        if t.kind == "feature":
            vals.append(ctx.transcoders.pre_activations(t.layer, run.mlp_in[b, t.layer, t.pos])[t.index])
        else:
            vals.append(_logit_read(run.logits[b, t.pos], t))
    return torch.stack(vals)


def _logit_read(logits: Tensor, node: Node) -> Tensor:
    """A logit node's read-out of ``logits [..., V]``: the demeaned logit of its token, or the
    logit difference to its contrast token."""
    if node.contrast is not None:
        return logits[..., node.index] - logits[..., node.contrast]
    return logits[..., node.index] - logits.mean(-1)


def source_vectors(ctx: ReplacementContext, nodes: Sequence[Node]) -> tuple[Tensor, Tensor, list[int]]:
    """Every source's vector as the two deltas the frozen forward takes: ``out [S, L, P, D]``
    (features and errors) and ``embed [S, P, D]`` (tokens), with the sources' node indices."""
    idx = [i for i, n in enumerate(nodes) if n.kind != "logit"]
    L, P, D = ctx.mlp_in.shape
    out = ctx.mlp_in.new_zeros(len(idx), L, P, D)
    emb = ctx.mlp_in.new_zeros(len(idx), P, D)
    for s, i in enumerate(idx):
        n = nodes[i]
        if n.kind == "feature":
            out[s, :, n.pos] = ctx.activations[n.layer, n.pos, n.index] * ctx.decoder_vectors(
                n.layer, n.index
            )
        elif n.kind == "error":
            out[s, n.layer, n.pos] = ctx.errors[n.layer, n.pos]
        else:
            emb[s, n.pos] = ctx.embed[n.pos]
    return out, emb, idx


def _feature_groups(ctx: ReplacementContext, nodes: Sequence[Node]) -> list[tuple[int, int, Tensor, Tensor]]:
    """Feature sources grouped by (layer, pos): their node indices and their vectors
    ``activation × decoder`` ``[F, J, D]`` for the J MLP outputs they write (1 per-layer,
    ``L − layer`` cross-layer), so each group's edges are one matrix product."""
    by_lp: dict[tuple[int, int], list[int]] = {}
    for i, x in enumerate(nodes):
        if x.kind == "feature":
            by_lp.setdefault((x.layer, x.pos), []).append(i)
    tc, dev = ctx.transcoders, ctx.mlp_in.device
    groups = []
    with torch.no_grad():
        for (layer, pos), idx in by_lp.items():
            f = torch.tensor([nodes[i].index for i in idx], dtype=torch.long, device=dev)
            dec = tc.clt.W_dec[layer][f] if tc.clt is not None else tc.transcoder(layer).W_dec[f][:, None]
            vec = ctx.activations[layer, pos, f][:, None, None] * dec
            groups.append((layer, pos, torch.tensor(idx, dtype=torch.long, device=dev), vec))
    return groups


class _Sources:
    """Every source's vector, grouped so that a batch of read-out gradients becomes a batch of
    adjacency rows in a few matrix products."""

    def __init__(self, ctx: ReplacementContext, nodes: Sequence[Node]):
        dev = ctx.mlp_in.device
        err_idx = [i for i, x in enumerate(nodes) if x.kind == "error"]
        tok_idx = [i for i, x in enumerate(nodes) if x.kind == "token"]
        self.groups = _feature_groups(ctx, nodes)
        with torch.no_grad():

            def longs(values: list[int]) -> Tensor:
                return torch.tensor(values, dtype=torch.long, device=dev)

            self.err_l = longs([nodes[i].layer for i in err_idx])
            self.err_p = longs([nodes[i].pos for i in err_idx])
            self.err_vec = ctx.errors[self.err_l, self.err_p]  # [E, D]
            self.tok_p = longs([nodes[i].pos for i in tok_idx])
            self.tok_vec = ctx.embed[self.tok_p]  # [T, D]
            self.err_cols, self.tok_cols = longs(err_idx), longs(tok_idx)

    def rows(self, ctx: ReplacementContext, nodes: Sequence[Node], rows: Sequence[int]) -> Tensor:
        """The adjacency rows ``[len(rows), n]`` (float64) of the targets ``rows``, from one
        backward pass with one target per batch row."""
        L, P, D = ctx.mlp_in.shape
        B, dev, dtype = len(rows), ctx.mlp_in.device, ctx.mlp_in.dtype
        embed_delta = torch.zeros(B, P, D, device=dev, dtype=dtype, requires_grad=True)
        out_delta = torch.zeros(B, L, P, D, device=dev, dtype=dtype, requires_grad=True)
        with torch.enable_grad():
            run = ctx.forward("frozen", embed_delta, out_delta)
            read = _readouts(ctx, run, [nodes[i] for i in rows])
            g_embed, g_out = torch.autograd.grad(read.sum(), (embed_delta, out_delta))
        out = torch.zeros(B, len(nodes), dtype=torch.float64, device=dev)
        with torch.no_grad():
            for layer, pos, cols, vec in self.groups:  # vec [F, J, D]: one product per (layer, pos)
                g = g_out[:, layer : layer + vec.shape[1], pos].reshape(B, -1)  # [B, J*D]
                out[:, cols] = (g @ vec.reshape(vec.shape[0], -1).T).double()
            if self.err_cols.numel():
                out[:, self.err_cols] = (g_out[:, self.err_l, self.err_p] * self.err_vec).sum(-1).double()
            if self.tok_cols.numel():
                out[:, self.tok_cols] = (g_embed[:, self.tok_p] * self.tok_vec).sum(-1).double()
        return out


def _estimated_influence(rows: np.ndarray, targets: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Influence of every node computed from the rows known so far: ``rows [R, n]`` are the
    adjacency rows of the nodes ``targets [R]``. Exact on the graph whose only targets are those
    nodes: solved on them alone (at most ``max_feature_nodes`` plus the logits), then carried one
    step back to every source."""
    a_hat = normalized_abs(rows)  # each known row normalised over all its sources
    inner = influence_of_normalized(a_hat[:, targets], w[targets])
    return (inner + w[targets]) @ a_hat


def attribute(
    ctx: ReplacementContext,
    nodes: Sequence[Node] | None = None,
    batch_size: int = 64,
    max_feature_nodes: int | None = None,
    progress: Callable[[float, str], None] | None = None,
    **logit_kw: Any,
) -> Attribution:
    """The full adjacency of ``nodes`` (default :func:`build_nodes` with ``logit_kw``).

    One backward pass per batch of targets: each row's read-out gradient at the token vectors
    and at every MLP output is dotted with each source's vector. With more active features than
    ``max_feature_nodes``, the logits' rows come first; then, batch by batch, the features of
    largest influence estimated from the rows known so far get theirs, until ``max_feature_nodes``
    are in. The graph keeps those features only (the others' edges are credited to no node), and
    only the rows computed are ever held (memory ``(logits + max_feature_nodes) × nodes``).
    """
    nodes = list(nodes) if nodes is not None else build_nodes(ctx, **logit_kw)
    if batch_size < 1:
        raise AttributionError(f"batch_size: must be >= 1, got {batch_size}")
    n = len(nodes)
    sources = _Sources(ctx, nodes)
    feats = [i for i, x in enumerate(nodes) if x.kind == "feature"]
    logits = [i for i, x in enumerate(nodes) if x.kind == "logit"]
    capped = max_feature_nodes is not None and len(feats) > max_feature_nodes
    budget = max(0, max_feature_nodes or 0) if capped else len(feats)
    targets: list[int] = []  # node index of each computed row, in the order computed
    held = torch.zeros(len(logits) + budget, n, dtype=torch.float64, device=ctx.mlp_in.device)
    passes = 0

    def fill(rows: Sequence[int], done: float) -> None:
        nonlocal passes
        held[len(targets) : len(targets) + len(rows)] = sources.rows(ctx, nodes, rows)
        targets.extend(rows)
        passes += 1
        if progress is not None:
            progress(done, "attributing")

    if not capped:
        order = feats + logits
        for start in range(0, len(order), batch_size):
            fill(order[start : start + batch_size], min(1.0, (start + batch_size) / len(order)))
    else:
        for start in range(0, len(logits), batch_size):
            fill(logits[start : start + batch_size], 0.0)
        done = np.zeros(n, dtype=bool)
        done[logits] = True
        is_feature = kind_mask(nodes, "feature")
        w = logit_weights(nodes)
        while len(targets) < len(logits) + budget:
            known = held[: len(targets)].cpu().numpy()
            est = _estimated_influence(known, np.array(targets), w)
            est[~is_feature | done] = -1.0
            pick = np.argsort(-est, kind="stable")[: min(batch_size, len(logits) + budget - len(targets))]
            pick = pick[est[pick] > 0]
            if pick.size == 0:  # no feature left with a path to a logit
                break
            done[pick] = True
            fill(sorted(pick.tolist()), (len(targets) - len(logits) + pick.size) / budget)
    keep = sorted(t for t in targets if nodes[t].kind == "feature")
    keep += [i for i, x in enumerate(nodes) if x.kind != "feature"]
    row_of = {t: r for r, t in enumerate(targets)}
    has_row = [j for j, i in enumerate(keep) if i in row_of]  # features and logits
    dev = held.device

    def longs(values: list[int]) -> Tensor:
        return torch.tensor(values, dtype=torch.long, device=dev)

    A = torch.zeros(len(keep), len(keep), dtype=torch.float64, device=dev)
    A[longs(has_row)] = held[longs([row_of[keep[j]] for j in has_row])][:, longs(keep)]
    return Attribution(ctx, [nodes[i] for i in keep], A, passes)


def target_readouts(ctx: ReplacementContext, nodes: Sequence[Node], run: FrozenRun) -> Tensor:
    """Every target's read-out ``[..., T]`` of an (un-batched or batched) run, targets in node
    order: feature pre-activations and demeaned logits. Used by checks."""
    pre = ctx.pre_activations(run.mlp_in)
    vals = []
    for t in nodes:
        if t.kind == "feature":
            vals.append(pre[..., t.layer, t.pos, t.index])
        elif t.kind == "logit":
            vals.append(_logit_read(run.logits[..., t.pos, :], t))
    return torch.stack(vals, dim=-1)


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
    ctx: ReplacementContext, nodes: Sequence[Node], chosen: Sequence[int], scale: float
) -> tuple[Tensor, Tensor]:
    """Measured read-out changes of ``nodes`` ``(live features, frozen features)`` when the chosen
    nodes' outputs are multiplied by ``scale``: tokens and errors through their vectors, features
    clamped to ``scale × activation`` in the live pass."""
    chosen_nodes = [nodes[i] for i in chosen]
    out, emb, _ = source_vectors(ctx, chosen_nodes)
    r = scale - 1.0
    is_feature = torch.tensor([x.kind == "feature" for x in chosen_nodes], device=out.device)
    embed_delta, out_delta = emb.sum(0) * r, out.sum(0) * r
    live_out = out[~is_feature].sum(0) * r  # a clamped feature writes through its decoder itself
    clamp = [
        (x.layer, x.pos, x.index, float(ctx.activations[x.layer, x.pos, x.index]) * scale)
        for x in chosen_nodes
        if x.kind == "feature"
    ]
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
    live, frozen = intervene(ctx, nodes, chosen, scale)
    targets = [i for i, x in enumerate(nodes) if x.kind in ("feature", "logit")]
    col = {i: j for j, i in enumerate(targets)}
    return [
        InterventionCheck(
            nodes[i], float(through[i]), float(live[col[i]]), float(direct[i]), float(frozen[col[i]])
        )
        for i in targets
        if nodes[i].kind == "logit"
    ]
