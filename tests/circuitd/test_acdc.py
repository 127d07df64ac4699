"""ACDC: the fast path against the one-test-per-pass reference, a hand-built model whose
circuit is known, tau sweeps, the prefilter and cancellation.

Exactness tests run in float64 so that no decision near tau can flip from rounding.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from circuitd.edge_context import MethodContext
from circuitd.edges import EdgeGraph
from circuitd.methods.acdc import ACDCParams
from circuitd.methods.acdc import planner as acdc_module
from circuitd.methods.acdc.fast import acdc_fast
from circuitd.methods.acdc.order import drop_inputless, visit_order
from circuitd.methods.acdc.planner import removals
from circuitd.methods.acdc.prefilter import prefilter
from circuitd.methods.acdc.reference import acdc_reference
from circuitd.methods.acdc.scoring import score_acdc
from circuitd.models.loading import build_from_config
from circuitd.models.registry import load_model
from circuitd.patching import PatchingEngine
from circuitd.progress import Cancelled
from circuitd.tasks import load_task_data, resolve_task
from tests.support.models import COPY_CIRCUIT, copy_model, copy_task, method_context


def _params(ctx: MethodContext, **values: object) -> ACDCParams:
    """ACDC's parameters with the context's metric as the test metric."""
    return ACDCParams.model_validate({"acdc_metric": ctx.metric, **values})


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
    ctx = method_context(model_id, dtype="float32")
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
@pytest.mark.slow
def test_fast_matches_reference_on_random_models(
    model_id: str, metric: str, ablation: str, tau: float, abs_value: bool, split: bool
) -> None:
    ctx = method_context(model_id, metric, ablation, split=split)
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
    ctx = MethodContext(model, graph, task, "kl", "resample", 4)
    for tau in (0.001, 0.01):
        ref = acdc_reference(ctx, tau)
        _assert_same(ref, acdc_fast(ctx, tau, rows=4))
        assert 0 < int(ref.keep.sum()) < graph.n_edges


@pytest.mark.slow
def test_fast_matches_reference_on_zoo_synth_ioi() -> None:
    ctx = method_context("zoo:synth", "kl", n=2)
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


@pytest.mark.slow
@pytest.mark.parametrize("incremental", [True, False])
def test_any_predictions_give_the_reference_decisions(incremental: bool, monkeypatch) -> None:
    """Predictions only decide how rows are built: coin-flip ones, right and wrong in both
    directions and across the taus of a sweep, change no decision."""
    ctx = method_context("random:tiny@6", "kl", "resample", n=6)
    taus = [0.03, 0.001, 0.01, 0.003]
    refs = [acdc_reference(ctx, t) for t in taus]
    gen = torch.Generator().manual_seed(3)

    def coin_flips(self, edges: list[int], rate: float, stage: int) -> list[float]:
        return torch.rand(len(edges), generator=gen, dtype=torch.float64).tolist()

    monkeypatch.setattr(acdc_module.KeepModel, "p_keep", coin_flips)
    for rows in (3, 7):
        sweep = acdc_fast(ctx, taus, rows=rows, incremental=incremental)
        for i, ref in enumerate(refs):
            _assert_same(ref, sweep, i)


def test_predictions_save_rows_on_zoo_synth() -> None:
    ctx = method_context("zoo:synth", "kl", n=8, dtype="float32")
    plain = acdc_fast(ctx, 0.01, rows=8, predict=False)
    predicted = acdc_fast(ctx, 0.01, rows=8)
    assert torch.equal(plain.keep, predicted.keep)
    assert predicted.extra["prediction_seconds"] > 0
    tests = int(plain.tested.sum())
    # rows beyond one per test: the ones thrown away after a wrong guess
    assert predicted.evaluations - tests < 0.85 * (plain.evaluations - tests)  # 290 against 356


# --- a model whose circuit is known ---------------------------------------------------------


def test_known_circuit_is_found() -> None:
    model = copy_model()
    graph = EdgeGraph(model.shape)
    ctx = MethodContext(model, graph, copy_task("kl"), "kl", "resample", 8)
    expected = COPY_CIRCUIT
    ref = acdc_reference(ctx, 0.1)
    fast = acdc_fast(ctx, 0.1, rows=3)
    for run in (ref, fast):
        got = {graph.edge_names[i] for i in run.keep[0].nonzero().squeeze(1).tolist()}
        assert got == expected
        for name in expected:  # each carries the answer: removing it costs much more than tau
            assert run.effects[0, graph.edge_index[name]] > 1.0


# --- tau sweeps -----------------------------------------------------------------------------


def test_sweep_equals_single_runs() -> None:
    ctx = method_context("random:tiny@6", "kl", "resample", n=6)
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
    res = score_acdc(ctx, _params(ctx, tau=taus), rows=4)
    largest = res.info["largest_surviving_tau"]
    for name, tau in largest.items():
        e = ctx.graph.edge_index[name]
        kept_at = [t for t, k in zip(taus, sweep.keep, strict=True) if k[e]]
        assert tau == max(kept_at)
    assert len(largest) == int(sweep.keep.any(0).sum())


# --- the method -----------------------------------------------------------------------------


def test_run_acdc_result_and_info() -> None:
    ctx = method_context("random:tiny@0", "logit_diff")
    res = score_acdc(ctx, _params(ctx, tau=0.05))
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
        _params(ctx, tau="x")


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_prefilter_reduces_evaluations(method: str) -> None:
    ctx = method_context("random:tiny@7", "logit_diff", "resample")
    plain = score_acdc(ctx, _params(ctx, tau=0.02), rows=1)
    params = _params(ctx, tau=0.02, prefilter_top_n=30, prefilter_method=method, ig_steps=3)
    pre = score_acdc(ctx, params, rows=1)
    figures = pre.info["prefilter"]
    assert figures["edges_selected"] == 30 and figures["method"] == method
    assert figures["edges_kept"] == 30 - figures["edges_dropped_inputless"]
    assert pre.info["evaluations"] < plain.info["evaluations"] / 2
    assert pre.info["evaluations_saved"] > 0
    assert pre.keep is not None and int(pre.keep.sum()) <= 30
    # the same circuit as the reference started from the prefiltered set
    start, _ = prefilter(ctx, params)
    assert start is not None
    ref = acdc_reference(ctx, 0.02, start=start)
    assert torch.equal(pre.keep, ref.keep[0])
    assert pre.info["evaluations_saved"] == ref.skipped
    assert pre.info["evaluations"] == ref.evaluations  # one circuit per pass: nothing wasted


def test_dropping_inputless_nodes_is_exact_under_resample() -> None:
    ctx = method_context("random:tiny@9", "logit_diff", "resample")
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

    ctx = method_context("random:tiny@8")
    ctx.progress = progress
    ctx.should_stop = lambda: state["stopped_at"] is not None
    with pytest.raises(Cancelled):
        score_acdc(ctx, _params(ctx, tau=0.01), rows=3)
    assert state["stopped_at"] == len(reports)  # no batch ran after the request
    assert all("evaluations" in s for _, s in reports)
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] < 1

    full: list[float] = []
    ctx = method_context("random:tiny@8")
    ctx.progress = lambda f, s: full.append(f)
    res = score_acdc(ctx, _params(ctx, tau=0.01), rows=3)
    assert math.isclose(full[-1], 1.0) and full == sorted(full)
    assert len(full) >= res.info["evaluations"] / 3  # at least one report per batch
