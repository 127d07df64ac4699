"""Attribution graphs (Ameisen et al. 2025) pinned by independent computations: the replacement model
against the real model's logits, every adjacency column against an intervention (rerunning the
frozen model with the source's vector added, or with a feature's activation doubled), and the
adjacency against an autograd Jacobian of the frozen linear model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from pydantic import ValidationError

from circuitd.access import full_access
from circuitd.attribution import (
    AttributionError,
    ReplacementContext,
    active_features,
    attribute,
    check_interventions,
    record,
    select_logits,
    source_vectors,
    target_readouts,
)
from circuitd.discover import discover
from circuitd.models.registry import load_model
from circuitd.spec import JobSpec
from circuitd.transcoders import random_transcoders, save
from graphs.attribution_graph import check_nodes, logit_weights, normalized_abs

TOL = dict(atol=1e-4, rtol=0.0)
# (preset, transcoder kind, activation, skip)
SETUPS = [
    ("tiny", "transcoder", "relu", False),
    ("tiny", "transcoder", "jumprelu", True),
    ("tiny", "cross_layer_transcoder", "jumprelu", False),
    ("small", "transcoder", "relu", True),
    ("small", "cross_layer_transcoder", "relu", True),
]
IDS = ["-".join(str(x) for x in s) for s in SETUPS]


def _context(preset: str, kind: str, activation: str, skip: bool, d_tc: int = 32, n_pos: int = 6):
    adapter = load_model(f"random:{preset}@0")
    cfg = adapter.shape
    tcs = random_transcoders(cfg.n_layers, cfg.d_model, d_tc, kind, activation, skip, seed=1)
    tokens = torch.randint(0, cfg.d_vocab, (n_pos,), generator=torch.Generator().manual_seed(2))
    return record(adapter, tcs, tokens)


@pytest.fixture(scope="module", params=SETUPS, ids=IDS)
def attributed(request):
    ctx = _context(*request.param)
    return ctx, attribute(ctx)


def _targets(nodes):
    return [i for i, n in enumerate(nodes) if n.kind in ("feature", "logit")]


def test_replacement_model_reproduces_the_real_logits(attributed):
    ctx, _ = attributed
    torch.testing.assert_close(ctx.reconstruction + ctx.errors, ctx.mlp_out, **TOL)
    for mode in ("live", "frozen"):
        run = ctx.forward(mode)
        torch.testing.assert_close(run.logits, ctx.logits, **TOL)
        torch.testing.assert_close(run.mlp_in, ctx.mlp_in, **TOL)
        torch.testing.assert_close(run.final_resid, ctx.final_resid, **TOL)


def test_nodes_and_structure(attributed):
    ctx, att = attributed
    nodes, A = att.nodes, att.adjacency
    check_nodes(nodes, A.numpy())
    feats = [n for n in nodes if n.kind == "feature"]
    assert feats and all(n.pos > 0 and n.activation > 0 for n in feats)
    assert len(feats) == int((ctx.activations[:, 1:] > 0).sum())
    assert not [n for n in nodes if n.kind == "error" and n.pos == 0]
    assert [n.pos for n in nodes if n.kind == "token"] == list(range(ctx.n_pos))
    logits = [n for n in nodes if n.kind == "logit"]
    assert 1 <= len(logits) <= 10 and all(n.pos == ctx.n_pos - 1 for n in logits)
    kinds = [n.kind for n in nodes]
    rows_without_inputs = torch.tensor([k in ("error", "token") for k in kinds])
    assert (A[rows_without_inputs] == 0).all()
    assert (A[:, torch.tensor([k == "logit" for k in kinds])] == 0).all()
    # A feature feeds only later layers and equal or later positions.
    for t, tn in enumerate(nodes):
        if tn.kind != "feature":
            continue
        for s, sn in enumerate(nodes):
            if sn.kind == "feature" and (sn.layer >= tn.layer or sn.pos > tn.pos):
                assert A[t, s] == 0
            if sn.kind in ("error", "token") and sn.pos > tn.pos:
                assert A[t, s] == 0
            if sn.kind == "error" and sn.layer >= tn.layer:
                assert A[t, s] == 0
    assert att.graph("prompt").adjacency.shape == A.shape


def test_every_column_equals_an_intervention(attributed):
    """Add each source's vector (error vector, token vector, activation × decoder) at its hook and
    rerun the frozen linear model: every target read-out moves by exactly its column."""
    ctx, att = attributed
    nodes = att.nodes
    out, emb, src = source_vectors(ctx, nodes)
    base = target_readouts(ctx, nodes, ctx.forward("frozen"))
    moved = target_readouts(ctx, nodes, ctx.forward("frozen", embed_delta=emb, out_delta=out))
    change = (moved - base).T  # [T, S]
    expected = att.adjacency[_targets(nodes)][:, src].to(change.dtype)
    torch.testing.assert_close(change, expected, **TOL)
    # the errors and tokens are really there: columns are not all zero
    for kind in ("error", "token", "feature"):
        cols = [j for j, i in enumerate(src) if nodes[i].kind == kind]
        assert expected[:, cols].abs().max() > 1e-3


def test_doubling_feature_activations(attributed):
    """Doubling 50 random active features' recorded activations (every activation held fixed, so
    the model is linear), one at a time and all together, moves every target pre-activation and
    demeaned logit by their columns."""
    ctx, att = attributed
    nodes = att.nodes
    base = target_readouts(ctx, nodes, ctx.forward("frozen"))
    feats = [i for i, n in enumerate(nodes) if n.kind == "feature"]
    assert len(feats) >= 50
    order = torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))[:50]
    picks = [feats[j] for j in order.tolist()]
    targets = _targets(nodes)
    for i in picks:
        n = nodes[i]
        acts = ctx.activations.clone()
        acts[n.layer, n.pos, n.index] *= 2
        doubled = dataclasses.replace(ctx, activations=acts)
        change = target_readouts(ctx, nodes, doubled.forward("frozen")) - base
        torch.testing.assert_close(change, att.adjacency[targets, i].to(change.dtype), **TOL)
    # all picks together: linear, so the columns add up
    acts = ctx.activations.clone()
    for i in picks:
        acts[nodes[i].layer, nodes[i].pos, nodes[i].index] *= 2
    change = target_readouts(ctx, nodes, dataclasses.replace(ctx, activations=acts).forward("frozen")) - base
    torch.testing.assert_close(change, att.adjacency[targets][:, picks].sum(1).to(change.dtype), **TOL)

def _source_jacobian(ctx, nodes, emb: torch.Tensor, out: torch.Tensor, n_src: int) -> torch.Tensor:
    """Autograd Jacobian of every target's read-out with respect to the coefficient of each
    source vector (``emb [S, P, D]`` at the token vectors, ``out [S, L, P, D]`` at the MLP
    outputs) in the frozen replacement model: the adjacency columns, computed independently."""

    def readouts(coef: torch.Tensor) -> torch.Tensor:
        run = ctx.forward(
            "frozen",
            embed_delta=torch.einsum("s,spd->pd", coef, emb),
            out_delta=torch.einsum("s,slpd->lpd", coef, out),
        )
        return target_readouts(ctx, nodes, run)

    return torch.autograd.functional.jacobian(readouts, torch.zeros(n_src))



@pytest.mark.parametrize("kind", ["transcoder", "cross_layer_transcoder"])
def test_adjacency_equals_autograd_jacobian(kind):
    """d(target read-out)/d(source coefficient) of the frozen linear model by
    torch.autograd.functional.jacobian, against the batched backward passes (batch size 3, so
    targets are split across several batches)."""
    ctx = _context("tiny", kind, "relu", True, d_tc=8, n_pos=4)
    att = attribute(ctx, batch_size=3)
    nodes = att.nodes
    out, emb, src = source_vectors(ctx, nodes)

    jac = _source_jacobian(ctx, nodes, emb, out, len(src))
    expected = att.adjacency[_targets(nodes)][:, src].to(jac.dtype)
    torch.testing.assert_close(jac, expected, **TOL)


def test_position_zero_and_given_logits():
    ctx = _context("tiny", "transcoder", "relu", False, d_tc=16, n_pos=4)
    assert (active_features(ctx)[:, 1] > 0).all()
    att = attribute(ctx, logit_ids=[3, 7])
    logits = [n for n in att.nodes if n.kind == "logit"]
    assert [n.index for n in logits] == [3, 7]
    probs = ctx.logits[-1].softmax(-1)
    assert logits[0].prob == pytest.approx(float(probs[3]), rel=1e-5)


def test_select_logits():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.16, 0.04]))
    assert select_logits(logits, p=0.95)[0] == [0, 1, 2]  # 0.96 reaches 0.95
    assert select_logits(logits, p=0.97)[0] == [0, 1, 2, 3]
    assert select_logits(logits, p=0.75)[0] == [0, 1]
    assert select_logits(logits, p=0.95, max_logits=2)[0] == [0, 1]
    flat = torch.zeros(50)
    assert len(select_logits(flat)[0]) == 10


def test_unsupported_models_are_refused():
    adapter = load_model("random:tiny-attn-only@0")
    tcs = random_transcoders(2, 64, 8)
    with pytest.raises(AttributionError, match="attention-only"):
        record(adapter, tcs, torch.tensor([1, 2, 3]))
    adapter = load_model("random:tiny@0")
    with pytest.raises(AttributionError, match="transcoders for 3 layers"):
        record(adapter, random_transcoders(3, 64, 8), torch.tensor([1, 2, 3]))


def test_context_type(attributed):
    ctx, _ = attributed
    assert isinstance(ctx, ReplacementContext)
    assert ctx.patterns.shape[-1] == ctx.n_pos and ctx.ln1_scale.shape == (ctx.n_layers, ctx.n_pos)


def test_logit_difference_target_is_the_difference_of_the_two_logit_rows():
    ctx = _context("small", "transcoder", "relu", True)
    good, bad = 5, 9
    diff = attribute(ctx, logit_diff=(good, bad))
    pair = attribute(ctx, logit_ids=[good, bad])
    target = diff.nodes[-1]
    assert (target.kind, target.index, target.contrast, target.prob) == ("logit", good, bad, 1.0)
    expected = pair.adjacency[-2, :-2] - pair.adjacency[-1, :-2]  # the demeaning cancels
    torch.testing.assert_close(diff.adjacency[-1, :-1], expected, **TOL)
    with pytest.raises(AttributionError, match="not both"):
        attribute(ctx, logit_ids=[1], logit_diff=(good, bad))


def _feature_rows(nodes):
    return [i for i, n in enumerate(nodes) if n.kind == "feature"]


@pytest.mark.parametrize("kind", ["transcoder", "cross_layer_transcoder"])
def test_max_feature_nodes_ranks_by_estimated_influence(kind):
    """Capped graphs keep exactly the full graph's rows for the features they keep; one batch
    keeps the features of largest influence on the logits' rows (the estimate at that point,
    computed here from the full matrix); passes are the logits' pass plus one per batch."""
    ctx = _context("small", kind, "relu", True)
    full = attribute(ctx)
    n_feats = len(_feature_rows(full.nodes))
    targets = n_feats + sum(n.kind == "logit" for n in full.nodes)
    assert full.backward_passes == -(-targets // 64)  # the floor when nothing is capped
    where = {n: i for i, n in enumerate(full.nodes)}
    capped = attribute(ctx, batch_size=16, max_feature_nodes=40)
    assert len(_feature_rows(capped.nodes)) == 40 < n_feats
    idx = [where[n] for n in capped.nodes]
    torch.testing.assert_close(capped.adjacency, full.adjacency[idx][:, idx], atol=1e-6, rtol=0)
    assert capped.backward_passes == 1 + 3  # logits, then 16 + 16 + 8 features

    one = attribute(ctx, batch_size=16, max_feature_nodes=16)
    A, w = full.adjacency.numpy(), logit_weights(full.nodes)
    logits = [i for i, n in enumerate(full.nodes) if n.kind == "logit"]
    est = w[logits] @ normalized_abs(A[logits])
    best = sorted(sorted(_feature_rows(full.nodes), key=lambda i: -est[i])[:16])
    assert [n for n in one.nodes if n.kind == "feature"] == [full.nodes[i] for i in best]
    assert one.backward_passes == 2


@pytest.mark.parametrize("kind", ["transcoder", "cross_layer_transcoder"])
def test_interventions_match_the_graphs_prediction(kind):
    """Scaling chosen nodes: with features frozen the measured change of every logit equals the
    direct edges' prediction; with features live, a small scaling (no feature crosses its
    threshold) equals the prediction carried through the feature edges."""
    ctx = _context("small", kind, "relu", True)
    att = attribute(ctx)
    nodes, A = att.nodes, att.adjacency.numpy()
    feats = _feature_rows(nodes)
    errors = [i for i, n in enumerate(nodes) if n.kind == "error"]
    tokens = [i for i, n in enumerate(nodes) if n.kind == "token"]
    chosen = [feats[3], feats[len(feats) // 2], errors[2], tokens[1]]
    for scale in (0.0, 2.0, 1.001):
        checks = check_interventions(ctx, A, nodes, chosen, scale)
        assert len(checks) == sum(n.kind == "logit" for n in nodes)
        for c in checks:
            assert c.actual_direct == pytest.approx(c.predicted_direct, abs=1e-4)
    for c in check_interventions(ctx, A, nodes, chosen, 1.001):
        assert c.actual == pytest.approx(c.predicted, abs=2e-5, rel=1e-2)
        assert abs(c.predicted - c.predicted_direct) > 1e-6  # the feature edges do matter
    with pytest.raises(AttributionError, match="logit"):
        check_interventions(ctx, A, nodes, [len(nodes) - 1])


# ------------------------------------------------------------- circuit-tracer's convention


def _basis(ctx: ReplacementContext, nodes, w_e: torch.Tensor):
    """Each source's unit of output, built here from the transcoders' weights and the recorded
    activations (not by circuitd's source_vectors): circuit-tracer's token vector is the token
    embedding ``W_E[token]`` alone, its error vectors at position 0 are zero."""
    src = [i for i, n in enumerate(nodes) if n.kind != "logit"]
    emb = torch.zeros(len(src), *ctx.embed.shape)
    out = torch.zeros(len(src), *ctx.mlp_out.shape)
    for s, i in enumerate(src):
        n = nodes[i]
        if n.kind == "feature":
            out[s, n.layer, n.pos] = (
                ctx.activations[n.layer, n.pos, n.index]
                * (ctx.transcoders.transcoder(n.layer).W_dec[n.index])
            )
        elif n.kind == "error" and n.pos > 0:
            out[s, n.layer, n.pos] = ctx.mlp_out[n.layer, n.pos] - ctx.reconstruction[n.layer, n.pos]
        elif n.kind == "token":
            emb[s, n.pos] = w_e[n.pos]
    return src, emb, out


def test_circuit_tracer_convention_equals_an_autograd_jacobian():
    """``convention="circuit-tracer"``: every column is d(read-out)/d(source coefficient) of the
    frozen linear model (torch.autograd.functional.jacobian) with circuit-tracer's source vectors;
    position 0 has error nodes with all-zero columns; the circuitd graph is the same but for the
    token columns, which differ by the positional embedding's own effect ``J_embed @ W_pos``."""
    ctx = _context("tiny", "transcoder", "jumprelu", True, d_tc=16, n_pos=5)
    ct = attribute(ctx, batch_size=5, convention="circuit-tracer")
    cd = attribute(ctx, batch_size=5)
    assert ct.convention == "circuit-tracer" and cd.convention == "circuitd"
    nodes = ct.nodes
    tl = ctx.adapter.hooked_transformer
    w_e, w_pos = tl.W_E[ctx.tokens].detach(), tl.W_pos[: ctx.n_pos].detach()
    src, emb, out = _basis(ctx, nodes, w_e)

    jac = _source_jacobian(ctx, nodes, emb, out, len(src))
    targets = _targets(nodes)
    torch.testing.assert_close(ct.adjacency[targets][:, src].to(jac.dtype), jac, **TOL)
    assert jac.abs().max() > 0.1  # not a vacuous comparison

    bos = [i for i, n in enumerate(nodes) if n.kind == "error" and n.pos == 0]
    assert sorted(nodes[i].layer for i in bos) == list(range(ctx.n_layers))
    assert (ct.adjacency[:, bos] == 0).all()

    # circuitd's nodes are circuit-tracer's without the error nodes at position 0 (logit
    # probabilities in float32 rather than float64)
    def key(n):
        return n.kind, n.layer, n.pos, n.index

    rest = [n for n in nodes if not (n.kind == "error" and n.pos == 0)]
    assert [key(n) for n in cd.nodes] == [key(n) for n in rest]
    for a, b in zip(cd.nodes, rest, strict=True):
        if a.kind == "logit":
            assert a.prob == pytest.approx(b.prob, rel=1e-6)
        else:
            assert a == b
    keep = [i for i in range(len(nodes)) if i not in bos]
    same = [j for j, n in enumerate(cd.nodes) if n.kind != "token"]
    torch.testing.assert_close(cd.adjacency[:, same], ct.adjacency[keep][:, keep][:, same], **TOL)

    def embed_readouts(delta: torch.Tensor) -> torch.Tensor:
        return target_readouts(ctx, nodes, ctx.forward("frozen", embed_delta=delta))

    j_embed = torch.autograd.functional.jacobian(embed_readouts, torch.zeros_like(ctx.embed))  # [T, P, D]
    toks = [j for j, n in enumerate(cd.nodes) if n.kind == "token"]
    cd_rows = [j for j, n in enumerate(cd.nodes) if n.kind in ("feature", "logit")]
    ct_tok = [i for i, n in enumerate(nodes) if n.kind == "token"]
    shift = torch.einsum("tpd,pd->tp", j_embed, w_pos)
    torch.testing.assert_close(
        cd.adjacency[cd_rows][:, toks].to(shift.dtype),
        ct.adjacency[targets][:, ct_tok].to(shift.dtype) + shift,
        **TOL,
    )
    assert shift.abs().max() > 1e-3  # the positional embedding does reach the targets


def test_circuit_tracer_logit_selection_is_its_float32_rule():
    """circuit-tracer picks ``topk`` of the float32 softmax and cuts at
    ``searchsorted(cumsum, p) + 1``; at p equal to each float32 cumulative sum the choice must be
    exactly that (float64 sums can fall just short or land just over)."""
    logits = torch.randn(200, generator=torch.Generator().manual_seed(5)) * 3
    probs = logits.softmax(-1)
    top_p, top_i = probs.topk(10)
    cum = top_p.cumsum(0)
    for p in [*cum.tolist(), 0.5, 0.95, 1.0]:
        cut = int(torch.searchsorted(cum, p)) + 1
        ids, ps = select_logits(logits, p, 10, convention="circuit-tracer")
        assert ids == top_i[:cut].tolist()
        assert ps == top_p[:cut].tolist()  # the float32 probabilities themselves


def test_unknown_convention_is_refused():
    ctx = _context("tiny", "transcoder", "relu", False, d_tc=8, n_pos=3)
    with pytest.raises(
        AttributionError, match="convention: expected one of circuitd, circuit-tracer, got 'x'$"
    ):
        attribute(ctx, convention="x")


def test_convention_through_the_job_spec(tmp_path):
    """The method's ``convention`` parameter reaches the graph, its metadata and validation: an
    error node at position 0 exists and scaling it changes nothing; scaling a token node moves
    each logit by its token-only edge."""
    tcs = random_transcoders(2, 64, 16, "transcoder", "relu", True, seed=1)
    save(tcs, tmp_path)
    prompt = [0, 5, 9, 33, 2]
    base = dict(model="random:tiny@0", method="attribution-graph", prompt=prompt, transcoders=str(tmp_path))
    with full_access():
        with pytest.raises(ValidationError, match="convention"):
            JobSpec(**base, convention="tracer")
        spec = JobSpec(**base, convention="circuit-tracer", validate_nodes=["0_E_0", "E_5_1"])
        result = discover(spec)
    g = result.full_graph.graph
    assert g["params"]["convention"] == "circuit-tracer"
    assert "0_E_0" in result.full_graph.nodes and "1_E_0" in result.full_graph.nodes
    targets = g["metrics"]["validation"]["targets"]
    assert targets
    att = attribute(
        record(load_model("random:tiny@0"), tcs, torch.tensor(prompt)), convention="circuit-tracer"
    )
    token = next(i for i, n in enumerate(att.nodes) if n.kind == "token" and n.pos == 1)
    logit_of = {n.index: i for i, n in enumerate(att.nodes) if n.kind == "logit"}
    for t in targets:  # logit ids are "{L+1}_{token}_{pos}"
        edge = float(att.adjacency[logit_of[int(t["logit"].split("_")[1])], token])
        assert abs(edge) > 1e-4
        # ablation (scale 0) removes the token's edge; the error node at position 0 adds nothing
        assert t["predicted_direct"] == pytest.approx(-edge, abs=1e-6)
        assert t["actual_direct"] == pytest.approx(-edge, abs=1e-4)


# ------------------------------------------------------------- transcoder sites and refusals


def test_sets_reading_other_hooks_are_refused_in_one_line():
    adapter = load_model("random:tiny@0")
    cfg = adapter.shape
    for hooks in (
        {"feature_input_hook": "hook_resid_pre"},
        {"feature_output_hook": "hook_resid_post"},
    ):
        tcs = random_transcoders(cfg.n_layers, cfg.d_model, 8, **hooks)
        with pytest.raises(AttributionError) as err:
            record(adapter, tcs, torch.tensor([1, 2, 3]))
        msg = str(err.value)
        assert "must read an MLP input" in msg and next(iter(hooks.values())) in msg and "\n" not in msg


def test_frozen_norm_scales_are_the_norms_own():
    """LayerNorm's frozen scale is sqrt(var + eps) of its input, RMSNorm's sqrt(mean(x²) + eps):
    each equals TransformerLens's own hook_scale (its unfused LayerNorm; RMSNorm is never fused)."""
    from transformer_lens.components.layer_norm import LayerNorm

    ctx = _context("tiny", "transcoder", "relu", False, d_tc=8, n_pos=4)
    ln1 = ctx.adapter.hooked_transformer.blocks[1].ln1
    assert isinstance(ln1, LayerNorm)
    seen = []
    handle = ln1.hook_scale.register_forward_hook(lambda m, i, out: seen.append(out))
    try:
        LayerNorm.forward(ln1, ctx.resid_pre[1])
    finally:
        handle.remove()
    torch.testing.assert_close(ctx.ln1_scale[1], seen[0][:, 0], atol=1e-6, rtol=1e-6)
