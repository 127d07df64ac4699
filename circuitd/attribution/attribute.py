"""Attribution graphs: the nodes of one prompt and the adjacency between them, computed on the
local replacement model of :mod:`circuitd.attribution.replacement` (Ameisen et al. 2025).

Nodes (order features, errors, tokens, logits, as :mod:`graphs.attribution_graph` requires):

* features ``(layer, pos, feature)`` with activation > 0, sorted by layer, position, index;
* errors ``(layer, pos)``, sorted by layer then position;
* tokens ``pos``: the token's vector is what enters block 0 (``blocks.0.hook_resid_pre``), the
  token embedding *plus* the positional embedding (for rotary models, the token embedding);
* logits at the last position: the top tokens until cumulative probability reaches ``p``
  (default 0.95, at most 10), or the token ids given.

Position 0 (BOS) has no feature or error nodes: its features and errors are set to zero as
sources (the forward pass itself is untouched), so their contribution is credited to no node.

``convention="circuit-tracer"`` gives circuit-tracer's graph (0.5.0) of the same replacement
model instead, node for node: token vectors are the token embedding alone (``hook_embed``; the
positional embedding is then credited to no node, like a bias), every position has error nodes
(those at position 0 have zero vectors), and the logits are chosen with probabilities in the
logits' own dtype (circuit-tracer's float32 softmax and cumulative sum), not in float64.

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
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from circuitd.attribution.replacement import AttributionError, FrozenRun, ReplacementContext
from circuitd.names import ATTRIBUTION_CONVENTIONS, AttributionConvention
from graphs.attribution_graph import (
    AttributionGraph,
    Node,
    influence_of_normalized,
    kind_mask,
    logit_weights,
    normalized_abs,
)


def _check_convention(convention: str) -> None:
    """Refuse a convention other than circuitd's and circuit-tracer's (module docstring)."""
    if convention not in ATTRIBUTION_CONVENTIONS:
        raise AttributionError(
            f"convention: expected one of {', '.join(ATTRIBUTION_CONVENTIONS)}, got {convention!r}"
        )


def _probabilities(logits: Tensor, convention: AttributionConvention) -> Tensor:
    """Softmax of ``logits [V]``: float64 (circuitd), or the logits' dtype as circuit-tracer
    computes it, so that the same tokens are chosen at the boundary of ``p``."""
    return (logits.double() if convention == "circuitd" else logits).softmax(-1)


def select_logits(
    logits: Tensor, p: float = 0.95, max_logits: int = 10, convention: AttributionConvention = "circuitd"
) -> tuple[list[int], list[float]]:
    """Top tokens of one position's ``logits [V]`` until cumulative probability reaches ``p``
    (at most ``max_logits``), with their probabilities."""
    top = _probabilities(logits, convention).topk(min(max_logits, logits.numel()))
    below = int((top.values.cumsum(0) < p).sum())  # the cumulative sum never falls
    n = min(below + 1, top.values.numel())
    return [int(i) for i in top.indices[:n].tolist()], [float(q) for q in top.values[:n].tolist()]


@dataclass
class Attribution:
    """The nodes and the full adjacency ``A[target, source]`` (float64) of one prompt, with the
    context they were computed in (its recorded tensors are the source vectors)."""

    context: ReplacementContext
    nodes: list[Node]
    adjacency: Tensor  # [n, n] float64
    backward_passes: int = 0
    convention: AttributionConvention = "circuitd"

    def graph(self, prompt: str = "", meta: dict[str, Any] | None = None) -> AttributionGraph:
        return AttributionGraph(
            self.adjacency.cpu().numpy().astype(np.float64),
            tuple(self.nodes),
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
    convention: AttributionConvention = "circuitd",
) -> list[Node]:
    """The graph's nodes in the required order (see the module docstring). Targets: the top
    logits up to probability ``p`` (at most ``max_logits``), or the tokens ``logit_ids``, or
    one logit-difference node ``logit_diff = (correct, incorrect)`` of weight 1. Under the
    ``circuit-tracer`` convention position 0 has error nodes too."""
    _check_convention(convention)
    feats = active_features(ctx)
    acts = ctx.activations[feats[:, 0], feats[:, 1], feats[:, 2]].tolist()  # one read, not one per node
    nodes = [
        Node("feature", pos=int(pos), layer=int(layer), index=int(f), activation=float(a))
        for (layer, pos, f), a in zip(feats.tolist(), acts, strict=True)
    ]
    first = 0 if convention == "circuit-tracer" else 1
    nodes += [
        Node("error", pos=pos, layer=layer)
        for layer in range(ctx.n_layers)
        for pos in range(first, ctx.n_pos)
    ]
    tok = ctx.adapter.tokenizer
    for pos, t in enumerate(ctx.tokens.tolist()):
        tok_text = tok.decode([t]) if tok is not None else None
        nodes.append(Node("token", pos=pos, index=int(t), token=tok_text))
    last = ctx.logits[-1]
    probs = _probabilities(last, convention)

    def text(i: int) -> str | None:
        return tok.decode([i]) if tok is not None else None

    if logit_diff is not None:
        if logit_ids is not None:
            raise AttributionError("attribution: give logit_ids or logit_diff, not both")
        good, bad = (int(i) for i in logit_diff)
        label = f"{text(good)} − {text(bad)}" if tok is not None else None
        return nodes + [Node("logit", pos=ctx.n_pos - 1, index=good, prob=1.0, token=label, contrast=bad)]
    if logit_ids is None:
        ids, ps = select_logits(last, p, max_logits, convention)
    else:
        ids = [int(i) for i in logit_ids]
        ps = [float(probs[i]) for i in ids]
    nodes += [
        Node("logit", pos=ctx.n_pos - 1, index=i, prob=q, token=text(i)) for i, q in zip(ids, ps, strict=True)
    ]
    return nodes


def _readouts(ctx: ReplacementContext, run: FrozenRun, targets: Sequence[Node]) -> Tensor:
    """Each batch row's own target read-out ``[B]``: row b of ``run`` read by ``targets[b]``
    (a feature's pre-activation, a logit's demeaned logit at its position); features are read
    one layer at a time, by their encoder rows alone."""
    by_layer: dict[int, list[int]] = {}
    rows: list[int] = []
    parts: list[Tensor] = []
    for b, t in enumerate(targets):
        if t.kind == "feature":
            by_layer.setdefault(cast(int, t.layer), []).append(b)  # a feature node has its layer
        else:
            rows.append(b)
            parts.append(_logit_read(run.logits[b, t.pos], t)[None])
    dev = run.mlp_in.device
    for layer, batch_rows in by_layer.items():
        b = torch.tensor(batch_rows, device=dev)
        pos = torch.tensor([targets[i].pos for i in batch_rows], device=dev)
        features = torch.tensor([targets[i].index for i in batch_rows], device=dev)
        w, bias = ctx.transcoders.encoder_rows(layer, features)
        parts.append((run.mlp_in[b, layer, pos] * w).sum(-1) + bias)
        rows += batch_rows
    return torch.cat(parts)[torch.tensor(rows).argsort().to(dev)]


def _logit_read(logits: Tensor, node: Node) -> Tensor:
    """A logit node's read-out of ``logits [..., V]``: the demeaned logit of its token, or the
    logit difference to its contrast token."""
    if node.contrast is not None:
        return logits[..., node.index] - logits[..., node.contrast]
    return logits[..., node.index] - logits.mean(-1)


def token_vectors(ctx: ReplacementContext, convention: AttributionConvention = "circuitd") -> Tensor:
    """The token nodes' vectors ``[P, D]``: what enters block 0 (circuitd), or the token
    embedding alone (circuit-tracer's ``hook_embed``)."""
    _check_convention(convention)
    if convention == "circuitd" or ctx.pos_embed is None:  # no positions in the residual stream
        return ctx.embed
    return ctx.embed - ctx.pos_embed


def error_vectors(ctx: ReplacementContext, convention: AttributionConvention = "circuitd") -> Tensor:
    """The error nodes' vectors ``[L, P, D]``; circuit-tracer zeroes those at position 0 (circuitd
    has no error nodes there)."""
    _check_convention(convention)
    if convention == "circuitd":
        return ctx.errors
    out = ctx.errors.clone()
    out[:, 0] = 0
    return out


def source_vectors(
    ctx: ReplacementContext, nodes: Sequence[Node], convention: AttributionConvention = "circuitd"
) -> tuple[Tensor, Tensor, list[int]]:
    """Every source's vector as the two deltas the frozen forward takes: ``out [S, L, P, D]``
    (features and errors) and ``embed [S, P, D]`` (tokens), with the sources' node indices."""
    tokens, errors = token_vectors(ctx, convention), error_vectors(ctx, convention)
    idx = [i for i, n in enumerate(nodes) if n.kind != "logit"]
    L, P, D = ctx.mlp_in.shape
    out = ctx.mlp_in.new_zeros(len(idx), L, P, D)
    emb = ctx.mlp_in.new_zeros(len(idx), P, D)
    for s, i in enumerate(idx):
        n = nodes[i]
        if n.kind == "feature":
            # a feature node has its layer and index (Node.__post_init__)
            out[s, :, n.pos] = ctx.activations[n.layer, n.pos, n.index] * ctx.decoder_vectors(
                cast(int, n.layer), cast(int, n.index)
            )
        elif n.kind == "error":
            out[s, n.layer, n.pos] = errors[n.layer, n.pos]
        else:
            emb[s, n.pos] = tokens[n.pos]
    return out, emb, idx


def _feature_groups(ctx: ReplacementContext, nodes: Sequence[Node]) -> list[tuple[int, int, Tensor, Tensor]]:
    """Feature sources grouped by (layer, pos): their node indices and their vectors
    ``activation × decoder`` ``[F, J, D]`` for the J MLP outputs they write (1 per-layer,
    ``L − layer`` cross-layer), so each group's edges are one matrix product."""
    by_lp: dict[tuple[int | None, int], list[int]] = {}
    for i, x in enumerate(nodes):
        if x.kind == "feature":
            by_lp.setdefault((x.layer, x.pos), []).append(i)
    tc, dev = ctx.transcoders, ctx.mlp_in.device
    groups = []
    with torch.no_grad():
        # a feature node has its layer (Node.__post_init__)
        for (layer, pos), idx in cast(dict[tuple[int, int], list[int]], by_lp).items():
            f = torch.tensor([nodes[i].index for i in idx], dtype=torch.long, device=dev)
            dec = tc.clt.W_dec[layer][f] if tc.clt is not None else tc.transcoder(layer).W_dec[f][:, None]
            vec = ctx.activations[layer, pos, f][:, None, None] * dec
            groups.append((layer, pos, torch.tensor(idx, dtype=torch.long, device=dev), vec))
    return groups


class _Sources:
    """Every source's vector, grouped so that a batch of read-out gradients becomes a batch of
    adjacency rows in a few matrix products; and one frozen forward pass of ``batch`` rows, each
    with its own zero deltas at the token vectors and MLP outputs, whose graph every batch of
    targets reuses (the model is frozen: only the read-outs and the backward pass change)."""

    def __init__(
        self, ctx: ReplacementContext, nodes: Sequence[Node], convention: AttributionConvention, batch: int
    ):
        dev = ctx.mlp_in.device
        self.batch = batch
        self._pass: tuple[Tensor, Tensor, FrozenRun] | None = None
        err_idx = [i for i, x in enumerate(nodes) if x.kind == "error"]
        tok_idx = [i for i, x in enumerate(nodes) if x.kind == "token"]
        self.groups = _feature_groups(ctx, nodes)
        with torch.no_grad():

            def longs(values: list[int]) -> Tensor:
                return torch.tensor(values, dtype=torch.long, device=dev)

            self.err_l = longs(cast(list[int], [nodes[i].layer for i in err_idx]))  # errors have layers
            self.err_p = longs([nodes[i].pos for i in err_idx])
            self.err_vec = error_vectors(ctx, convention)[self.err_l, self.err_p]  # [E, D]
            self.tok_p = longs([nodes[i].pos for i in tok_idx])
            self.tok_vec = token_vectors(ctx, convention)[self.tok_p]  # [T, D]
            self.err_cols, self.tok_cols = longs(err_idx), longs(tok_idx)

    def _frozen_pass(self, ctx: ReplacementContext) -> tuple[Tensor, Tensor, FrozenRun]:
        if self._pass is None:
            L, P, D = ctx.mlp_in.shape
            dev, dtype = ctx.mlp_in.device, ctx.mlp_in.dtype
            embed_delta = torch.zeros(self.batch, P, D, device=dev, dtype=dtype, requires_grad=True)
            out_delta = torch.zeros(self.batch, L, P, D, device=dev, dtype=dtype, requires_grad=True)
            with torch.enable_grad():
                self._pass = embed_delta, out_delta, ctx.forward("frozen", embed_delta, out_delta)
        return self._pass

    def rows(self, ctx: ReplacementContext, nodes: Sequence[Node], rows: Sequence[int]) -> Tensor:
        """The adjacency rows ``[len(rows), n]`` (float64) of the targets ``rows``, from one
        backward pass with one target per batch row."""
        B, dev = len(rows), ctx.mlp_in.device
        if B > self.batch:
            raise ValueError(f"{B} targets in one pass, at most {self.batch}")
        embed_delta, out_delta, run = self._frozen_pass(ctx)
        with torch.enable_grad():
            read = _readouts(ctx, run, [nodes[i] for i in rows])  # rows 0..B-1 of the pass
            g_embed, g_out = torch.autograd.grad(read.sum(), (embed_delta, out_delta), retain_graph=True)
        g_embed, g_out = g_embed[:B], g_out[:B]
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
    convention: AttributionConvention = "circuitd",
    **logit_kw: Any,
) -> Attribution:
    """The full adjacency of ``nodes`` (default :func:`build_nodes` with ``logit_kw``), with the
    token and error vectors of ``convention`` (module docstring).

    One frozen forward pass, then one backward pass per batch of targets: each row's read-out
    gradient at the token vectors and at every MLP output is dotted with each source's vector.
    With more active features than ``max_feature_nodes``, the logits' rows come first; then,
    batch by batch, the features of largest influence estimated from the rows known so far get
    theirs, until ``max_feature_nodes`` are in. The graph keeps those features only (the
    others' edges are credited to no node), and only the rows computed are ever held (memory
    ``(logits + max_feature_nodes) × nodes``).
    """
    nodes = list(nodes) if nodes is not None else build_nodes(ctx, convention=convention, **logit_kw)
    if batch_size < 1:
        raise AttributionError(f"batch_size: must be >= 1, got {batch_size}")
    n = len(nodes)
    feats = [i for i, x in enumerate(nodes) if x.kind == "feature"]
    logits = [i for i, x in enumerate(nodes) if x.kind == "logit"]
    sources = _Sources(ctx, nodes, convention, batch=max(1, min(batch_size, len(feats) + len(logits))))
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
    return Attribution(ctx, [nodes[i] for i in keep], A, passes, convention)


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

