"""Attribution graphs (Ameisen et al. 2025) pinned by independent computations: the replacement model
against the real model's logits, every adjacency column against an intervention (rerunning the
frozen model with the source's vector added, or with a feature's activation doubled), and the
adjacency against an autograd Jacobian of the frozen linear model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

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
from circuitd.models.registry import load_model
from circuitd.transcoders import random_transcoders
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


@pytest.mark.parametrize("kind", ["transcoder", "cross_layer_transcoder"])
def test_adjacency_equals_autograd_jacobian(kind):
    """d(target read-out)/d(source coefficient) of the frozen linear model by
    torch.autograd.functional.jacobian, against the batched backward passes (batch size 3, so
    targets are split across several batches)."""
    ctx = _context("tiny", kind, "relu", True, d_tc=8, n_pos=4)
    att = attribute(ctx, batch_size=3)
    nodes = att.nodes
    out, emb, src = source_vectors(ctx, nodes)

    def readouts(coef: torch.Tensor) -> torch.Tensor:
        run = ctx.forward(
            "frozen",
            embed_delta=torch.einsum("s,spd->pd", coef, emb),
            out_delta=torch.einsum("s,slpd->lpd", coef, out),
        )
        return target_readouts(ctx, nodes, run)

    jac = torch.autograd.functional.jacobian(readouts, torch.zeros(len(src)))
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
