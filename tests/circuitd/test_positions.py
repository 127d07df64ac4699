"""Position-aware edges (``positions``): every edge split by the token position of its source's
output, pinned to TransformerLens's own hooks patching one position, to the autograd of the
engine's patched pass, and to the edge graph without positions (the positions of an edge add
up to it); then the methods and the workflow that use them."""

from __future__ import annotations

import pytest
import torch

from circuitd import metrics
from circuitd.batch import TaskBatch
from circuitd.edge_context import MethodContext
from circuitd.edges import EdgeGraph
from circuitd.evaluate import Evaluator
from circuitd.methods.eap_ig_act_scores import activation_ig_scores
from circuitd.methods.eap_scores import edge_scores
from circuitd.methods.patching_scores import incremental_supported, patching_scores
from circuitd.models.loading import build_from_config
from circuitd.patching import PatchingEngine
from circuitd.selection import prune_dangling
from circuitd.tasks import load_task_data, resolve_task
from tests.circuitd.test_patching import brute_force_edge, use_gradient_path
from tests.circuitd.test_patching_method import GQA, brute_force
from tests.support.models import random_setup


def positional(graph: EdgeGraph, n: int) -> EdgeGraph:
    return EdgeGraph(graph.shape, graph.split_qkv, graph.kv_heads, tuple(f"p{i}" for i in range(n)))


def gqa_setup(kv_heads: str) -> tuple[MethodContext, TaskBatch]:
    model = build_from_config(GQA, None, None, "test:gqa", dtype=torch.float64)
    data = load_task_data("random", None, model.shape.d_vocab, n=4, seed=2, metric="logit_diff")
    task = resolve_task(data, None, model.shape.d_vocab, model.shape.n_ctx)
    b = TaskBatch.from_task(task)
    graph = EdgeGraph(model.shape, True, kv_heads, tuple(f"p{i}" for i in range(b.clean.shape[1])))  # type: ignore[arg-type]
    return MethodContext(model, graph, task, "logit_diff", "resample", batch_size=3), b


def test_layout_names_and_views() -> None:
    model, graph, _, _, b = random_setup("random:tiny@0", n=2)
    pg = positional(graph, b.clean.shape[1])
    p, e = pg.n_positions, graph.n_edges
    assert pg.n_edges == p * e and pg.n_base_edges == e
    assert pg.edge_names[e + 3] == f"{graph.edge_names[3]}@1"
    assert pg.layout()["positions"] == [f"p{i}" for i in range(p)]
    alpha = torch.arange(pg.n_edges).float()[None]
    g = pg.groups[2]
    view = pg.group_view(alpha, g)  # [C, P, n_dest, n_src] or [C, P, n_src]
    assert view.shape[1] == p
    torch.testing.assert_close(view[0, 1].flatten(), torch.arange(e + g.offset, e + g.stop).float())
    # one position's edge kept: its source and destination stay alive, every other position pruned
    keep = torch.zeros(pg.n_edges, dtype=torch.bool)
    chain = [graph.edge_index["input->a0.h0<v>"], graph.edge_index["a0.h0->logits"]]
    keep[[2 * e + chain[0], 3 * e + chain[1]]] = True
    assert torch.equal(prune_dangling(pg, keep), keep)
    keep[4 * e + graph.edge_index["a0.h1->logits"]] = True  # a0.h1 has no incoming edge anywhere
    assert int(prune_dangling(pg, keep).sum()) == 2


@pytest.mark.parametrize("split", [True, False])
def test_engine_patches_one_position_as_the_models_hooks_do(split: bool, request) -> None:
    """An edge at position p, ablated alone, gives TransformerLens's logits with the source's
    output at p replaced by its corrupted value in the destination's input at p only."""
    model, graph, _, _, b = random_setup("random:tiny@1", split, n=3, seed=1)
    pg = positional(graph, b.clean.shape[1])
    engine = PatchingEngine(model, pg)
    tl_model = model.hooked_transformer
    tl_model.set_use_attn_result(True)
    request.addfinalizer(lambda: tl_model.set_use_attn_result(False))
    _, corrupted_cache = tl_model.run_with_cache(b.corrupted)
    ablated = engine.ablated_sources("resample", b.corrupted)
    picked = list(range(0, pg.n_edges, 7))  # every position, every kind of destination
    alpha = torch.zeros(len(picked), pg.n_edges)
    alpha[torch.arange(len(picked)), picked] = 1.0
    engine_out = torch.cat([engine.run(b.clean, ablated, chunk) for chunk in alpha.split(32)])
    clean = model.run(b.clean)
    moved = 0
    for row, i in enumerate(picked):
        edge, at = pg.edge_names[i].split("@")
        expected = brute_force_edge(tl_model, edge, b.clean, corrupted_cache, position=int(at))
        torch.testing.assert_close(engine_out[row], expected, atol=1e-5, rtol=0, msg=pg.edge_names[i])
        moved += int((expected - clean).abs().max() > 1e-4)
    assert moved >= 0.5 * len(picked)  # later positions cannot reach earlier ones: not every edge moves


def _mask_gradient(ctx: MethodContext, b: TaskBatch) -> torch.Tensor:
    engine = PatchingEngine(ctx.model, ctx.graph)
    ablated = engine.ablated_sources(ctx.ablation, b.corrupted)
    alpha = torch.zeros(ctx.graph.n_edges, dtype=ctx.model.dtype, requires_grad=True)
    metrics.metric(ctx.metric, engine.run(b.clean, ablated, alpha), b).backward()
    assert alpha.grad is not None
    return alpha.grad


@pytest.mark.parametrize(
    ("model_id", "split", "path"),
    [("random:tiny@3", True, "lean"), ("random:small@6", True, "shared"), ("random:small@6", True, "split"),
     ("random:tiny-attn-only@2", True, "lean"), ("random:tiny@3", False, "lean")],
)
def test_eap_by_position_is_the_positional_mask_gradient(
    model_id: str, split: bool, path: str, monkeypatch
) -> None:
    model, graph, _, task, b = random_setup(model_id, split, n=4)
    use_gradient_path(model, path, monkeypatch)
    ctx = MethodContext(model, positional(graph, b.clean.shape[1]), task, "logit_diff", batch_size=4)
    scores = edge_scores(ctx, 1)
    expected = _mask_gradient(ctx, b)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    assert expected.abs().max() > 1e-3


@pytest.mark.parametrize("kv_heads", ["grouped", "per-query"])
def test_grouped_query_model_by_position(kv_heads: str) -> None:
    ctx, b = gqa_setup(kv_heads)
    torch.testing.assert_close(edge_scores(ctx, 1), _mask_gradient(ctx, b), atol=1e-6, rtol=0)
    assert not incremental_supported(ctx)
    torch.testing.assert_close(patching_scores(ctx, rows=11), brute_force(ctx), atol=1e-6, rtol=0)


@pytest.mark.parametrize("ablation", ["resample", "mean"])
def test_positions_add_up_to_the_edge(ablation: str) -> None:
    """First-order scores are sums over positions: EAP, EAP-IG and EAP-IG over activations by
    position add up to their scores without positions."""
    model, graph, _, task, b = random_setup("random:tiny@5", n=5)
    base = MethodContext(model, graph, task, "logit_diff", ablation, batch_size=2)
    p = b.clean.shape[1]
    by_pos = MethodContext(model, positional(graph, p), task, "logit_diff", ablation, batch_size=2)
    for steps in (1, 3):
        summed = edge_scores(by_pos, steps).view(p, -1).sum(0)
        torch.testing.assert_close(summed, edge_scores(base, steps), atol=1e-6, rtol=0)
    act = activation_ig_scores(by_pos, 3)
    torch.testing.assert_close(act.view(p, -1).sum(0), activation_ig_scores(base, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(activation_ig_scores(by_pos, 1), edge_scores(by_pos, 1), atol=1e-6, rtol=0)


def test_patching_by_position_is_brute_force() -> None:
    model, graph, _, task, b = random_setup("random:tiny@2", n=3)
    ctx = MethodContext(model, positional(graph, b.clean.shape[1]), task, "kl", "resample", batch_size=2)
    expected = brute_force(ctx)
    torch.testing.assert_close(patching_scores(ctx, rows=64), expected, atol=1e-5, rtol=0)
    assert int((expected.abs() > 1e-5).sum()) > 0.3 * ctx.graph.n_edges


def test_an_edge_kept_at_every_position_is_the_edge_kept() -> None:
    """The evaluator on a position-aware graph: a circuit kept at all positions has the metric
    of the same circuit without positions."""
    model, graph, _, task, b = random_setup("random:tiny@4", n=4)
    p = b.clean.shape[1]
    keep = torch.rand(graph.n_edges, generator=torch.Generator().manual_seed(1)) > 0.5
    plain = Evaluator(MethodContext(model, graph, task, "logit_diff", batch_size=4))
    by_pos = Evaluator(MethodContext(model, positional(graph, p), task, "logit_diff", batch_size=4))
    torch.testing.assert_close(by_pos.metric_of(keep.repeat(p)), plain.metric_of(keep), atol=1e-5, rtol=0)
    assert by_pos.summary(keep.repeat(p))["n_edges_total"] == p * graph.n_edges


def test_a_position_aware_job_names_its_positions() -> None:
    """Through the method workflow: the graph records the task's position names, every edge its
    position, and the logits read only the answer's position."""
    from circuitd.discover import discover
    from circuitd.spec import JobSpec
    from graphs import summarize

    spec = JobSpec(model="zoo:synth", task="induction", method="eap", positions=True, top_n=60, n_prompts=8)
    result = discover(spec)
    layout = result.graph.graph["edge_layout"]
    names = layout["positions"]
    assert names[0] == "BOS" and len(names) == len(set(names))
    m = result.metrics
    assert m["n_edges_total"] == len(names) * 1519 and m["n_edges"] <= 60
    assert 0.3 < m["faithfulness"] <= 1.2, m
    for _, _, key, d in result.graph.edges(keys=True, data=True):
        assert d["name"].endswith(f"@{d['position']}") and key.endswith(f"@{d['position']}")
        assert d["position_name"] == names[d["position"]]
    strongest = max((d for *_, d in result.graph.edges(data=True)), key=lambda d: abs(d["score"]))
    assert f"{strongest['name']:<28} {strongest['score']:+.4g}   ({strongest['position_name']})" in summarize(
        result.graph
    )
    last = len(names) - 1
    into_logits = [d for _, v, d in result.full_graph.edges(data=True) if v == "logits"]
    assert {d["position"] for d in into_logits if d["score"] != 0} == {last}


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("acdc", {"positions": True}, "positions: this method does not split edges by position"),
        ("eap", {"positions": True, "level": "node"}, "position-aware edges are edge level only"),
    ],
)
def test_positions_refused_where_they_do_not_apply(method: str, params: dict, message: str) -> None:
    from pydantic import ValidationError

    from circuitd.spec import JobSpec

    with pytest.raises(ValidationError, match=message):
        JobSpec(model="zoo:synth", task="induction", method=method, params=params)


def test_prompts_of_several_lengths_are_refused() -> None:
    from circuitd.discover import discover
    from circuitd.errors import CircuitdError
    from circuitd.spec import JobSpec

    spec = JobSpec(model="zoo:synth", task="ioi", method="eap", positions=True, n_prompts=16)
    with pytest.raises(CircuitdError, match="position-aware edges need prompts of one length"):
        discover(spec)


COPY_AT_POSITIONS = {"input->a0.h0<v>@0", "a0.h0->a1.h0<v>@3", "a1.h0->logits@3"}
"""zoo:known-copy's circuit by position: its corrupted prompts change token 0 only; a0.h0 carries
it and a1.h0 reads it at the last position (3), where the answer is read."""


@pytest.mark.parametrize(
    ("method", "params"),
    [("patching", {}), ("eap", {}), ("eap-ig-act", {"ig_steps": 3}), ("edge-pruning", {"target_edges": 3})],
)
def test_every_position_aware_method_finds_the_copy_circuit_by_position(method: str, params: dict) -> None:
    from circuitd.discover import discover
    from circuitd.models.zoo_known import shipped_task
    from circuitd.spec import JobSpec

    spec = JobSpec(model="zoo:known-copy", task=shipped_task("known-copy"), method=method,
                   params={"positions": True, "curve": False, **params})
    result = discover(spec)
    assert result.graph.graph["edge_layout"]["positions"] == ["p0", "p1", "p2", "p3"]
    scores = {d["name"]: d["score"] for *_, d in result.full_graph.edges(data=True)}
    ranked = sorted(scores, key=lambda n: -abs(scores[n]))
    assert set(ranked[:3]) == COPY_AT_POSITIONS
    if method != "edge-pruning":  # its scores are keep probabilities
        assert all(abs(scores[n]) < 1e-6 for n in ranked[3:])
    kept = {d["name"] for *_, d in result.graph.edges(data=True)}
    assert COPY_AT_POSITIONS <= kept and result.metrics["faithfulness"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("model_id", ["random:tiny@0", "random:tiny-attn-only@2"])
def test_run_from_a_cached_pass_weighs_each_position(model_id: str) -> None:
    """The prefix passes on a position-aware graph: from every block, from a pass with ablated
    edges, and with a block nobody reads, they give the plain patched pass's logits."""
    model, graph, _, _, b = random_setup(model_id, n=4, seed=3)
    pg = positional(graph, b.clean.shape[1])
    engine = PatchingEngine(model, pg)
    ablated = engine.ablated_sources("resample", b.corrupted)
    gen = torch.Generator().manual_seed(0)
    src = torch.tensor(pg.edge_table[1])
    n_layers = graph.shape.n_layers
    for start in (None, (torch.rand(pg.n_edges, generator=gen) > 0.7).float()):
        cached = engine.cached_pass(b.clean, ablated, start)
        for layer in range(n_layers + 1):
            first = next(g for g in graph.groups if g.kind == "logits" or g.layer >= layer)
            for dead in [(), (n_layers - 1,)]:
                alpha = (torch.rand(3, pg.n_edges, generator=gen) > 0.5).float()
                for m in dead:  # every edge out of block m ablated, at every position: it is skipped
                    lo = graph.head_source(m, 0)
                    alpha[:, (src >= lo) & (src < lo + graph.shape.n_heads + 1)] = 1
                by_position = alpha.view(3, pg.n_positions, -1)
                fixed = 0 if start is None else start.view(pg.n_positions, -1)[:, : first.offset]
                by_position[..., : first.offset] = fixed
                with torch.no_grad():
                    expected = engine.run(b.clean, ablated, alpha)
                    got = engine.run_from(cached, layer, alpha)
                torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
    late = torch.zeros(1, pg.n_edges)
    late[0, pg.n_base_edges * (pg.n_positions - 1)] = 1  # an edge into block 0, at the last position
    with pytest.raises(ValueError, match="differ from the cached pass"):
        engine.run_from(engine.cached_pass(b.clean, ablated), 1, late)
