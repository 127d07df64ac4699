"""ACDC: the fast path against the one-test-per-pass reference, a hand-built model whose
circuit is known, tau sweeps, the prefilter and cancellation.

Exactness tests run in float64 so that no decision near tau can flip from rounding.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from circuitd.edges import EdgeGraph
from circuitd.methods import acdc as acdc_module
from circuitd.methods.acdc import (
    acdc_fast,
    acdc_reference,
    drop_inputless,
    prefilter,
    removals,
    run_acdc,
    visit_order,
)
from circuitd.methods.base import Cancelled, MethodContext
from circuitd.models.adapter import build_from_config
from circuitd.models.registry import load_model
from circuitd.patching import PatchingEngine
from circuitd.tasks import load_task_data, resolve_task
from circuitd.tasks.base import TaskData


def _ctx(
    model_id: str, metric: str = "kl", ablation: str = "resample", n: int = 6, seed: int = 0,
    params: dict | None = None, batch_size: int = 4, dtype: str = "float64", split: bool = True,
) -> MethodContext:
    model = load_model(model_id, dtype=dtype)
    graph = EdgeGraph(model.shape, split)
    if model.tokenizer is None:
        data = load_task_data("random", None, model.shape.d_vocab, n=n, seed=seed, metric=metric)
    else:
        data = load_task_data("ioi", model.tokenizer, model.shape.d_vocab, n=n, seed=seed, metric=metric)
    task = resolve_task(data, model.tokenizer, model.shape.d_vocab, model.shape.n_ctx)
    return MethodContext(model, graph, task, metric, ablation, dict(params or {}), batch_size)


def _assert_same(ref, fast, i: int = 0) -> None:
    assert torch.equal(ref.keep[0], fast.keep[i])
    assert torch.equal(ref.tested[0], fast.tested[i])
    torch.testing.assert_close(fast.effects[i], ref.effects[0], atol=1e-9, rtol=0)


# --- the order ------------------------------------------------------------------------------


def test_visit_order_is_reverse_topological_and_covers_every_edge_once() -> None:
    graph = EdgeGraph(load_model("random:tiny@0").shape)
    blocks = visit_order(graph)
    names = [[n.name for n in b] for b in blocks]
    assert names == [
        ["logits"], ["m1"], ["a1.h3", "a1.h2", "a1.h1", "a1.h0"], ["m0"], ["a0.h3", "a0.h2", "a0.h1", "a0.h0"]
    ]
    assert [b[0].start for b in blocks] == [2, 1, 1, 0, 0]
    edges = [e for b in blocks for n in b for e in n.edges]
    assert sorted(edges) == list(range(graph.n_edges))
    en = graph.edge_names
    assert [en[e] for e in blocks[0][0].edges[:3]] == ["m1->logits", "a1.h3->logits", "a1.h2->logits"]
    head = blocks[2][0]  # a1.h3: q, then k, then v; sources latest first
    assert [en[e] for e in head.edges[:2]] == ["m0->a1.h3<q>", "a0.h3->a1.h3<q>"]
    assert en[head.edges[6]] == "m0->a1.h3<k>" and en[head.edges[-1]] == "input->a1.h3<v>"


# --- the engine's run from a cached pass ----------------------------------------------------


@pytest.mark.parametrize("model_id", ["random:tiny@0", "random:tiny-attn-only@2"])
def test_run_from_equals_run(model_id: str) -> None:
    """From every block, from a pass with ablated edges, and with blocks nobody reads."""
    ctx = _ctx(model_id, dtype="float32")
    graph, engine = ctx.graph, PatchingEngine(ctx.model, ctx.graph)
    tokens = torch.tensor(ctx.task.clean)
    ablated = engine.ablated_sources("resample", torch.tensor(ctx.task.corrupted))
    gen = torch.Generator().manual_seed(0)
    src = torch.tensor(graph.edge_table[1])
    n_layers = graph.shape.n_layers
    for start in (None, (torch.rand(graph.n_edges, generator=gen) > 0.7).float()):
        cached = engine.cached_pass(tokens, ablated, start)
        for layer in range(n_layers + 1):
            first = next(g for g in graph.groups if g.kind == "logits" or g.layer >= layer)
            for dead in [(), (n_layers - 1,)]:
                alpha = (torch.rand(3, graph.n_edges, generator=gen) > 0.5).float()
                for m in dead:  # every edge out of block m ablated: the block is skipped
                    lo = graph.head_source(m, 0)
                    alpha[:, (src >= lo) & (src < lo + graph.shape.n_heads + 1)] = 1
                alpha[:, : first.offset] = 0 if start is None else start[: first.offset]
                with torch.no_grad():
                    expected = engine.run(tokens, ablated, alpha)
                    got = engine.run_from(cached, layer, alpha)
                torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
        bad = torch.ones(1, graph.n_edges)
        if start is None:
            with pytest.raises(ValueError, match="differ from the cached pass"):
                engine.run_from(cached, 1, bad)


# --- fast == reference ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "metric", "ablation", "tau", "abs_value", "split"),
    [
        ("random:tiny@0", "kl", "resample", 0.01, False, True),
        ("random:tiny@1", "kl", "zero", 0.003, True, True),
        ("random:tiny@2", "logit_diff", "resample", 0.05, False, True),
        ("random:tiny@3", "logit_diff", "mean", 0.02, True, True),
        ("random:tiny@4", "logit_diff", "zero", 0.1, False, True),
        ("random:tiny-attn-only@5", "kl", "mean", 0.005, False, True),
        ("random:tiny@6", "logit_diff", "resample", 0.03, False, False),
    ],
)
def test_fast_matches_reference_on_random_models(
    model_id: str, metric: str, ablation: str, tau: float, abs_value: bool, split: bool
) -> None:
    ctx = _ctx(model_id, metric, ablation, split=split)
    ref = acdc_reference(ctx, tau, abs_value)
    # incremental trials (rows from free memory, one, five), and passes from the cached prefix
    for rows, incremental in ((None, True), (1, True), (5, True), (None, False), (5, False)):
        fast = acdc_fast(ctx, tau, abs_value, rows=rows, incremental=incremental)
        _assert_same(ref, fast)
        assert fast.evaluations >= ref.evaluations == int(ref.tested.sum()) + 1
    assert 0 < int(ref.keep.sum()) < ctx.graph.n_edges  # neither trivial outcome


def test_fast_matches_reference_on_rotary_parallel_model() -> None:
    """Rotary positions with parallel attention and MLP (as in Pythia): the last layer's
    heads are read at the answer positions only, and their queries need those positions."""
    from tests.circuitd.test_lean_pass import BASE, VARIANTS

    model = build_from_config(dict(BASE, **VARIANTS["neox-like"], seed=1), None, None, "test:neox-like",
                              dtype=torch.float64)
    graph = EdgeGraph(model.shape)
    data = load_task_data("random", None, model.shape.d_vocab, n=6, seed=0, metric="kl")
    task = resolve_task(data, None, model.shape.d_vocab, model.shape.n_ctx)
    ctx = MethodContext(model, graph, task, "kl", "resample", {}, 4)
    for tau in (0.001, 0.01):
        ref = acdc_reference(ctx, tau)
        _assert_same(ref, acdc_fast(ctx, tau, rows=4))
        assert 0 < int(ref.keep.sum()) < graph.n_edges


def test_fast_matches_reference_on_zoo_synth_ioi() -> None:
    ctx = _ctx("zoo:synth", "kl", n=2)
    taus = [0.05, 0.5]
    sweep = acdc_fast(ctx, taus, rows=4)
    for i, tau in enumerate(taus):
        ref = acdc_reference(ctx, tau)
        _assert_same(ref, sweep, i)
        assert 0 < int(ref.keep.sum()) < 0.1 * ctx.graph.n_edges
        assert int(ref.tested.sum()) < ctx.graph.n_edges / 2  # dead nodes were skipped


def test_rows_follow_the_predictions() -> None:
    # row j removes candidate j and the earlier ones predicted removed
    got = removals([True, False, True, False])
    assert got.tolist() == [
        [True, False, False, False],
        [False, True, False, False],
        [False, True, True, False],
        [False, True, False, True],
    ]


@pytest.mark.parametrize("incremental", [True, False])
def test_any_predictions_give_the_reference_decisions(incremental: bool, monkeypatch) -> None:
    """Predictions only decide how rows are built: coin-flip ones, right and wrong in both
    directions and across the taus of a sweep, change no decision."""
    ctx = _ctx("random:tiny@6", "kl", "resample", n=6)
    taus = [0.03, 0.001, 0.01, 0.003]
    refs = [acdc_reference(ctx, t) for t in taus]
    gen = torch.Generator().manual_seed(3)

    def coin_flips(self, edges: list[int], rate: float, stage: int) -> list[float]:
        return torch.rand(len(edges), generator=gen, dtype=torch.float64).tolist()

    monkeypatch.setattr(acdc_module._KeepModel, "p_keep", coin_flips)
    for rows in (3, 7):
        sweep = acdc_fast(ctx, taus, rows=rows, incremental=incremental)
        for i, ref in enumerate(refs):
            _assert_same(ref, sweep, i)


def test_predictions_save_rows_on_zoo_synth() -> None:
    ctx = _ctx("zoo:synth", "kl", n=8, dtype="float32")
    plain = acdc_fast(ctx, 0.01, rows=8, predict=False)
    predicted = acdc_fast(ctx, 0.01, rows=8)
    assert torch.equal(plain.keep, predicted.keep)
    assert predicted.extra["prediction_seconds"] > 0
    tests = int(plain.tested.sum())
    # rows beyond one per test: the ones thrown away after a wrong guess
    assert predicted.evaluations - tests < 0.85 * (plain.evaluations - tests)  # 290 against 356


# --- a model whose circuit is known ---------------------------------------------------------

V, P = 5, 4  # tokens, positions


def _copy_model():
    """Attention-only, 2 layers x 2 heads, no LayerNorm. a0.h0 moves the first token to every
    position (subspace M); a1.h0 at the last position reads M at its own position and
    writes to subspace O, which the unembedding reads. Every other weight is zero."""
    tok, pos, mov, out = 0, V, V + P, 2 * V + P
    d = 3 * V + P
    cfg = dict(
        n_layers=2, d_model=d, n_heads=2, d_head=V, n_ctx=P, d_vocab=V, attn_only=True,
        normalization_type=None, positional_embedding_type="standard", act_fn="relu",
    )
    model = build_from_config(cfg, None, None, "hand:copy", dtype=torch.float64)
    tl = model.model
    s = 6.0
    with torch.no_grad():
        for p in tl.parameters():
            p.zero_()
        tl.embed.W_E[:, tok:pos] = torch.eye(V)
        tl.pos_embed.W_pos[:, pos : pos + P] = torch.eye(P)
        a0, a1 = tl.blocks[0].attn, tl.blocks[1].attn
        a0.W_Q[0, pos : pos + P, 0] = s  # every position asks ...
        a0.W_K[0, pos, 0] = s  # ... for position 0
        a0.W_V[0, tok:pos, :] = torch.eye(V)
        a0.W_O[0, :, mov : mov + V] = torch.eye(V)
        a1.W_Q[0, pos + P - 1, 0] = s  # the last position asks for itself
        a1.W_K[0, pos + P - 1, 0] = s
        a1.W_V[0, mov : mov + V, :] = torch.eye(V)
        a1.W_O[0, :, out : out + V] = torch.eye(V)
        tl.unembed.W_U[out : out + V, :] = 4 * torch.eye(V)
    return model


def test_known_circuit_is_found() -> None:
    model = _copy_model()
    graph = EdgeGraph(model.shape)
    clean = [[a, (a + 1) % V, (a + 2) % V, (a + 3) % V] for a in range(V)]
    corrupted = [[(r[0] + 2) % V, *r[1:]] for r in clean]
    data = TaskData(
        name="copy", clean=clean, corrupted=corrupted, correct=[r[0] for r in clean],
        incorrect=[r[0] for r in corrupted], metric="kl", prepend_bos=False,
    )
    task = resolve_task(data, None, V, P)
    ctx = MethodContext(model, graph, task, "kl", "resample", {}, 8)
    expected = {"input->a0.h0<v>", "a0.h0->a1.h0<v>", "a1.h0->logits"}
    ref = acdc_reference(ctx, 0.1)
    fast = acdc_fast(ctx, 0.1, rows=3)
    for run in (ref, fast):
        got = {graph.edge_names[i] for i in run.keep[0].nonzero().squeeze(1).tolist()}
        assert got == expected
        for name in expected:  # each carries the answer: removing it costs much more than tau
            assert run.effects[0, graph.edge_index[name]] > 1.0


# --- tau sweeps -----------------------------------------------------------------------------


def test_sweep_equals_single_runs() -> None:
    ctx = _ctx("random:tiny@6", "kl", "resample", n=6)
    taus = [0.03, 0.001, 0.01, 0.003, 0.1]
    sweep = acdc_fast(ctx, taus, rows=4)
    assert sweep.taus == taus
    singles = [acdc_fast(ctx, t, rows=4) for t in taus]
    for i, single in enumerate(singles):
        assert torch.equal(sweep.keep[i], single.keep[0])
        assert torch.equal(sweep.effects[i], single.effects[0])
    counts = [int(k.sum()) for k in sweep.keep]
    assert len(set(counts)) >= 3  # the taus give different circuits
    assert sweep.evaluations < sum(s.evaluations for s in singles)  # shared tests ran once
    ctx.params = {"tau": taus, "acdc_batch": 4}
    res = run_acdc(ctx)
    largest = res.info["largest_surviving_tau"]
    for name, tau in largest.items():
        e = ctx.graph.edge_index[name]
        kept_at = [t for t, k in zip(taus, sweep.keep, strict=True) if k[e]]
        assert tau == max(kept_at)
    assert len(largest) == int(sweep.keep.any(0).sum())


# --- the method -----------------------------------------------------------------------------


def test_run_acdc_result_and_info() -> None:
    ctx = _ctx("random:tiny@0", "logit_diff", params={"tau": 0.05})
    res = run_acdc(ctx)
    ref = acdc_reference(ctx, 0.05)
    assert res.keep is not None and res.keep.dtype == torch.bool
    assert torch.equal(res.keep, ref.keep[0])
    assert res.scores.shape == (ctx.graph.n_edges,) and bool(torch.isfinite(res.scores).all())
    assert bool((res.scores[~ref.tested[0]] == 0).all())
    info = json.loads(json.dumps(res.info))
    assert info["tau"] == [0.05] and info["n_edges_per_tau"] == [int(ref.keep.sum())]
    assert info["evaluations"] >= ref.evaluations and info["evaluations_saved"] == 0
    assert info["prefilter"] is None and "largest_surviving_tau" not in info
    with pytest.raises(ValueError, match="tau"):
        run_acdc(_ctx("random:tiny@0", params={"tau": "x"}))


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_prefilter_reduces_evaluations(method: str) -> None:
    ctx = _ctx("random:tiny@7", "logit_diff", "resample", params={"tau": 0.02, "acdc_batch": 1})
    plain = run_acdc(ctx)
    ctx.params = {"tau": 0.02, "acdc_batch": 1, "prefilter_top_n": 30, "prefilter_method": method,
                  "ig_steps": 3}
    pre = run_acdc(ctx)
    figures = pre.info["prefilter"]
    assert figures["edges_selected"] == 30 and figures["method"] == method
    assert figures["edges_kept"] == 30 - figures["edges_dropped_inputless"]
    assert pre.info["evaluations"] < plain.info["evaluations"] / 2
    assert pre.info["evaluations_saved"] > 0
    assert pre.keep is not None and int(pre.keep.sum()) <= 30
    # the same circuit as the reference started from the prefiltered set
    start, _ = prefilter(ctx)
    assert start is not None
    ref = acdc_reference(ctx, 0.02, start=start)
    assert torch.equal(pre.keep, ref.keep[0])
    assert pre.info["evaluations_saved"] == ref.skipped
    assert pre.info["evaluations"] == ref.evaluations  # one circuit per pass: nothing wasted


def test_dropping_inputless_nodes_is_exact_under_resample() -> None:
    ctx = _ctx("random:tiny@9", "logit_diff", "resample")
    graph, engine = ctx.graph, PatchingEngine(ctx.model, ctx.graph)
    keep = torch.zeros(graph.n_edges, dtype=torch.bool)
    keep[torch.randperm(graph.n_edges, generator=torch.Generator().manual_seed(0))[:15]] = True
    kept = drop_inputless(graph, keep)
    assert 0 < int(kept.sum()) < 15 and bool((kept <= keep).all())
    tokens = torch.tensor(ctx.task.clean)
    ablated = engine.ablated_sources("resample", torch.tensor(ctx.task.corrupted))
    with torch.no_grad():
        a = engine.run(tokens, ablated, (~keep).double())
        b = engine.run(tokens, ablated, (~kept).double())
    torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_progress_and_cancel_within_one_batch() -> None:
    reports: list[tuple[float, str]] = []
    state = {"stop_after": 5, "stopped_at": None}

    def progress(f: float, stage: str) -> None:
        reports.append((f, stage))
        if len(reports) == state["stop_after"]:
            state["stopped_at"] = len(reports)

    ctx = _ctx("random:tiny@8", params={"tau": 0.01, "acdc_batch": 3})
    ctx.progress = progress
    ctx.should_stop = lambda: state["stopped_at"] is not None
    with pytest.raises(Cancelled):
        run_acdc(ctx)
    assert state["stopped_at"] == len(reports)  # no batch ran after the request
    assert all("evaluations" in s for _, s in reports)
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] < 1

    full: list[float] = []
    ctx = _ctx("random:tiny@8", params={"tau": 0.01, "acdc_batch": 3})
    ctx.progress = lambda f, s: full.append(f)
    res = run_acdc(ctx)
    assert math.isclose(full[-1], 1.0) and full == sorted(full)
    assert len(full) >= res.info["evaluations"] / 3  # at least one report per batch
