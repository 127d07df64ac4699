"""Node level (circuitd.methods.node_level): summed EAP scores against autograd of one alpha per node,
exact node scores against ablation through TransformerLens's own hooks, ACDC-node on the
hand-built copy model, and node-level EAP end to end on zoo:synth."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from pydantic import ValidationError

from circuitd import metrics
from circuitd.batch import TaskBatch
from circuitd.discover import discover
from circuitd.edge_context import MethodContext
from circuitd.edges import EdgeGraph
from circuitd.evaluate import Evaluator
from circuitd.jobs import build_task
from circuitd.methods.acdc import ACDCParams
from circuitd.methods.contract import EdgeParams, NodeScoring
from circuitd.methods.eap import EAPIGParams, EAPParams
from circuitd.methods.eap_scores import score_eap, score_eap_ig
from circuitd.methods.edge_run import circuit_size, evaluators
from circuitd.methods.neuron_level import NeuronEvaluator, neuron_scores
from circuitd.methods.node_level import (
    edges_of_nodes,
    exact_node_scores,
    out_edge_sums,
    score_nodes,
    select_nodes,
    with_input,
)
from circuitd.models.registry import load_model
from circuitd.patching import PatchingEngine
from circuitd.spec import JobSpec, spec_error_line
from graphs import queries
from tests.support.models import copy_model, copy_task, method_context


def _node_alpha_gradient(ctx: MethodContext) -> torch.Tensor:
    """d metric / d alpha_u with alpha_u ablating every out-edge of node u, on the whole task."""
    engine = PatchingEngine(ctx.model, ctx.graph)
    batch = TaskBatch.from_task(ctx.task)
    ablated = engine.ablated_sources(ctx.ablation, batch.corrupted)
    node_alpha = torch.zeros(ctx.graph.n_sources, dtype=ctx.model.dtype, requires_grad=True)
    alpha = node_alpha[torch.tensor(ctx.graph.edge_table[1])]
    clean_lp = None
    if ctx.metric == "kl":
        clean_lp = metrics.clean_logprobs_of(ctx.model.run(batch.clean), batch).detach()
    metrics.metric(ctx.metric, engine.run(batch.clean, ablated, alpha), batch, clean_lp).backward()
    assert node_alpha.grad is not None
    return node_alpha.grad.double()


@pytest.mark.parametrize("metric_name", ["logit_diff", "nll"])
def test_summed_eap_scores_are_the_gradient_of_one_alpha_per_node(metric_name: str) -> None:
    ctx = method_context("random:tiny@0", metric=metric_name, n=6, batch_size=4)
    edge_scores = score_eap(ctx, EAPParams()).scores.double()
    summed = out_edge_sums(ctx.graph, edge_scores)
    expected = _node_alpha_gradient(ctx)
    torch.testing.assert_close(summed, expected, atol=1e-6, rtol=0)
    assert expected.abs().min() > 1e-4  # every node moves the metric: the comparison is not vacuous
    nodes = score_nodes(ctx, EAPParams(level="node"), score_eap, evaluators(ctx))
    torch.testing.assert_close(nodes.scores, expected, atol=1e-6, rtol=0)
    assert nodes.keep is None


def test_summed_eap_ig_with_one_step_is_summed_eap() -> None:
    ctx = method_context("random:tiny@1", metric="logit_diff")
    eap = score_nodes(ctx, EAPParams(level="node"), score_eap, evaluators(ctx)).scores
    ig1 = score_nodes(ctx, EAPIGParams(level="node", ig_steps=1), score_eap_ig, evaluators(ctx)).scores
    torch.testing.assert_close(ig1, eap, atol=1e-9, rtol=0)


def _hook_of(name: str) -> tuple[str, int | None]:
    """The TransformerLens hook that carries node ``name``'s output, and its head index."""
    if name == "input":
        return "blocks.0.hook_resid_pre", None
    if name.startswith("m"):
        return f"blocks.{name[1:]}.hook_mlp_out", None
    layer, head = name[1:].split(".h")
    return f"blocks.{layer}.attn.hook_z", int(head)


def _brute_force_node_metric(ctx: MethodContext, node: str) -> float:
    """The task metric with ``node``'s output replaced by its value on the corrupted prompts."""
    tl = ctx.model.hooked_transformer
    batch = TaskBatch.from_task(ctx.task)
    _, corrupted = tl.run_with_cache(batch.corrupted)
    name, head = _hook_of(node)

    def patch(act: torch.Tensor, hook: object) -> torch.Tensor:
        act = act.clone()
        if head is None:
            act[:] = corrupted[name]
        else:
            act[:, :, head] = corrupted[name][:, :, head]
        return act

    clean_lp = None
    if ctx.metric == "kl":
        clean_lp = metrics.clean_logprobs_of(tl(batch.clean), batch)
    with torch.no_grad():
        logits = tl.run_with_hooks(batch.clean, fwd_hooks=[(name, patch)])
    return float(metrics.metric(ctx.metric, logits, batch, clean_lp))


@pytest.mark.parametrize(
    ("model_id", "metric_name"), [("random:tiny@0", "logit_diff"), ("random:tiny@1", "kl")]
)
def test_exact_node_scores_equal_ablating_each_node_through_hooks(model_id: str, metric_name: str) -> None:
    ctx = method_context(model_id, metric=metric_name, n=5, batch_size=2)
    evaluator = Evaluator(ctx)
    scores = exact_node_scores(evaluator)
    by_hooks = [_brute_force_node_metric(ctx, n) for n in ctx.graph.sources]
    expected = torch.tensor(by_hooks, dtype=torch.float64) - evaluator.metric_full
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    assert (expected.abs() > 1e-4).sum() >= len(expected) - 1  # almost every node matters
    found = score_nodes(ctx, ExactParams(level="node"), score_eap, lambda metric: evaluator)
    torch.testing.assert_close(found.scores, expected, atol=1e-5, rtol=0)


class ExactParams(EdgeParams):
    """A method whose node scores are exact single-node patches (as ``patching``'s)."""

    node_scoring: ClassVar[NodeScoring | None] = "exact"


def test_circuit_size_reads_the_level() -> None:
    assert circuit_size({"n_edges": 18, "n_edges_total": 110}) == "18/110 edges"
    nodes = {"n_edges": 18, "n_edges_total": 110, "n_nodes": 3, "n_nodes_total": 10}
    assert circuit_size(nodes) == "3/10 nodes (18/110 edges)"
    assert circuit_size({"n_neurons": 20, "n_neurons_total": 512}) == "20/512 neurons"


def test_edges_into_dropped_nodes_change_no_metric() -> None:
    """The stored node circuit leaves out edges into dropped nodes: the metric is the one of
    ablating only the dropped nodes' out-edges."""
    ctx = method_context("random:tiny@2", metric="kl", batch_size=3)
    graph, evaluator = ctx.graph, Evaluator(ctx)
    gen = torch.Generator().manual_seed(0)
    node_keep = with_input(torch.rand(8, graph.n_sources - 1, generator=gen) > 0.5)
    derived = edges_of_nodes(graph, node_keep)
    out_edges_only = node_keep[:, torch.tensor(graph.edge_table[1])]
    assert (derived.sum(-1) < out_edges_only.sum(-1)).all()  # some edges really were left out
    torch.testing.assert_close(
        evaluator.metric_of(derived), evaluator.metric_of(out_edges_only), atol=1e-6, rtol=0
    )


def test_derived_edges_of_a_node_circuit() -> None:
    graph = EdgeGraph(load_model("random:tiny@0").shape)  # 2 layers x 4 heads, MLPs
    keep = torch.zeros(graph.n_sources, dtype=torch.bool)
    keep[[0, graph.head_source(0, 1), graph.mlp_source(1)]] = True
    names = {graph.edge_names[i] for i in edges_of_nodes(graph, keep).nonzero().squeeze(1).tolist()}
    assert names == {
        "input->logits", "input->a0.h1<q>", "input->a0.h1<k>", "input->a0.h1<v>", "input->m1",
        "a0.h1->m1", "a0.h1->logits", "m1->logits",
    }
    scores = torch.arange(graph.n_sources, dtype=torch.float64) - 4.5  # |score| largest: input, m1, a1.h3
    top_two = select_nodes(scores, n=2).nonzero().squeeze(1).tolist()
    assert top_two == [0, graph.head_source(1, 3), graph.mlp_source(1)]
    assert int(select_nodes(scores, threshold=4.0).sum()) == 1 + 2  # input, and |4|, |5| among the rest


def test_grouped_key_value_edges_reach_any_kept_query_head() -> None:
    from circuitd.models.loading import build_from_config

    model = build_from_config(
        dict(n_layers=2, d_model=16, n_heads=4, n_key_value_heads=2, d_head=4, d_mlp=32, n_ctx=8, d_vocab=20,
             act_fn="gelu", normalization_type="LN", seed=0),
        None, None, "test:gqa",
    )
    graph = EdgeGraph(model.shape)
    keep = torch.zeros(graph.n_sources, dtype=torch.bool)
    keep[[0, graph.head_source(1, 3)]] = True  # a1.h3 reads key/value head a1.kv1
    names = {graph.edge_names[i] for i in edges_of_nodes(graph, keep).nonzero().squeeze(1).tolist()}
    assert names == {
        "input->logits", "input->a1.h3<q>", "input->a1.kv1<k>", "input->a1.kv1<v>", "a1.h3->logits"
    }


def test_acdc_over_nodes_keeps_the_copy_models_heads() -> None:
    model = copy_model()
    for metric_name in ("kl", "logit_diff"):
        ctx = MethodContext(model, EdgeGraph(model.shape), copy_task(metric_name), metric_name, batch_size=2)
        params = ACDCParams(level="node", tau=[0.01, 1e6], acdc_metric=metric_name)
        found = score_nodes(ctx, params, score_eap, evaluators(ctx))
        assert found.keep is not None
        kept = [ctx.graph.sources[i] for i in found.keep.nonzero().squeeze(1).tolist()]
        assert kept == ["input", "a0.h0", "a1.h0"], metric_name
        assert found.info["n_nodes_per_tau"] == [2, 0]  # an enormous tau drops every node
        assert found.info["evaluations"] == 1 + 2 * 4  # the full model, then each node once per tau
        a1h0 = ctx.graph.head_source(1, 0)
        assert float(found.scores[a1h0]) > 0.5  # removing the copying head costs the metric
        assert float(found.scores[ctx.graph.head_source(0, 1)]) == pytest.approx(0.0, abs=1e-9)


def test_level_is_validated() -> None:
    class EdgeOnly(EdgeParams):
        """A method without a node level."""

    with pytest.raises(ValidationError, match="level: 'node' is not available for this method"):
        EdgeOnly(level="node")
    with pytest.raises(ValidationError, match="level"):
        EAPParams(level="graph")  # type: ignore[arg-type]
    assert EAPParams().level == "edge"
    with pytest.raises(ValidationError, match="prefilter_top_n: the prefilter selects edges; not at level"):
        ACDCParams(level="node", prefilter_top_n=10)
    with pytest.raises(ValidationError) as exc:
        JobSpec.model_validate({"model": "random:tiny", "task": "random", "method": "eap", "level": "graph"})
    assert spec_error_line(exc.value).startswith("params.level: ")


def test_node_level_eap_on_synth_ioi() -> None:
    spec = JobSpec(model="zoo:synth", task="ioi", method="eap", level="node", top_n=6, seed=0, n_prompts=16)
    result = discover(spec)
    m, g = result.metrics, result.full_graph
    assert g.graph["level"] == "node" and result.graph.graph["level"] == "node"
    assert m["curve_level"] == "node" and m["n_nodes"] == 6
    kept = [n for n, d in result.graph.nodes(data=True) if d["kind"] in ("attn_head", "mlp")]
    assert len(kept) == 6 and all(result.graph.nodes[n]["in_circuit"] for n in kept)
    model = load_model("zoo:synth")
    graph = EdgeGraph(model.shape)
    assert m["n_nodes_total"] == graph.n_sources - 1
    node_keep = torch.tensor([bool(g.nodes[n]["in_circuit"]) for n in graph.sources])
    assert torch.equal(edges_of_nodes(graph, node_keep), result.keep)
    assert result.graph.number_of_edges() == m["n_edges"] == int(result.keep.sum())
    task = build_task(spec, model, None)
    evaluator = Evaluator(MethodContext(model, graph, task, task.metric, "resample", spec.batch_size))
    assert evaluator.summary(result.keep)["faithfulness"] == pytest.approx(m["faithfulness"], abs=1e-6)
    top = queries.top(result.full_graph, 6)
    assert top["level"] == "node" and sorted(n["id"] for n in top["nodes"]) == sorted(kept)
    scores = [abs(n["score"]) for n in top["nodes"]]
    assert scores == sorted(scores, reverse=True)
    curve = m["curve"]
    assert curve["n_nodes"][-1] == graph.n_sources - 1
    assert curve["faithfulness"][-1] == pytest.approx(1.0, abs=1e-5)


def test_node_level_job_over_http(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job with ``level: node`` through the API (in process, SQLite store, in-memory broker)
    and the worker's own run of it; the stored graph says its level and scores its nodes."""
    import os

    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.deps import celery_client
    from circuitd.settings import get_settings
    from circuitd.store import get_store
    from workers.runner import execute

    for name in [k for k in os.environ if k.startswith("CIRCUITD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CIRCUITD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CIRCUITD_DATABASE_URL", f"sqlite:///{tmp_path / 'circuitd.db'}")
    monkeypatch.setenv("CIRCUITD_BROKER_URL", "memory://")
    get_settings.cache_clear()
    celery_client.cache_clear()
    try:
        store = get_store()
        key = store.create_key("alice")
        params = {"level": "node", "top_n": 3}
        spec = {"model": "random:tiny", "task": "random", "method": "eap", "params": params}
        with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}) as client:
            bad = client.post("/v1/jobs", json={**spec, "method": "acdc", "params": {"level": "neuron"}})
            assert bad.status_code == 422 and "params.level" in bad.text, bad.text
            r = client.post("/v1/jobs", json=spec)
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            assert execute(job_id, store) == "succeeded"
            job = client.get(f"/v1/jobs/{job_id}").json()
            assert job["status"] == "succeeded" and job["metrics"]["n_nodes"] == 3
            doc = client.get(f"/v1/jobs/{job_id}/graph").json()
            full = client.get(f"/v1/jobs/{job_id}/graph", params={"all_edges": "true"}).json()
    finally:
        get_settings.cache_clear()
        celery_client.cache_clear()
    assert doc["graph"]["level"] == "node" and doc["graph"]["metrics"]["curve_level"] == "node"
    heads_and_mlps = [n for n in doc["nodes"] if n["kind"] in ("attn_head", "mlp")]
    assert len(heads_and_mlps) == 3 and all(n["in_circuit"] for n in heads_and_mlps)
    assert len(doc["links"]) == job["metrics"]["n_edges"]
    by_id = {n["id"]: n for n in full["nodes"]}
    assert len(full["links"]) == 110
    assert sum(link["in_circuit"] for link in full["links"]) == len(doc["links"])
    assert all(link["score"] == by_id[link["source"]]["score"] for link in full["links"])
    dropped = [n for n in full["nodes"] if n["kind"] in ("attn_head", "mlp") and not n["in_circuit"]]
    assert len(dropped) == 7
    assert max(abs(n["score"]) for n in dropped) <= min(abs(n["score"]) for n in heads_and_mlps)


# --- neuron level -----------------------------------------------------------------------------


def _neuron_beta_gradient(ctx: MethodContext, t: float = 1.0) -> torch.Tensor:
    """d metric / d beta ``[L, d_mlp]``, every MLP neuron's activation moved by ``beta (ablated -
    clean)``, with the input embedding at ``corrupted + t (clean - corrupted)``; through
    TransformerLens's own hooks on the whole task at once."""
    tl = ctx.model.hooked_transformer
    batch = TaskBatch.from_task(ctx.task)
    n_layers = ctx.model.shape.n_layers
    names = [f"blocks.{layer}.mlp.hook_post" for layer in range(n_layers)]
    _, clean = tl.run_with_cache(batch.clean)
    _, corrupted = tl.run_with_cache(batch.corrupted)
    if ctx.ablation == "resample":
        ablated = {n: corrupted[n] for n in names}
    else:  # mean: over the corrupted prompts' real positions
        mask = batch.token_mask[:, :, None].to(ctx.model.dtype)
        ablated = {n: ((corrupted[n] * mask).sum((0, 1)) / mask.sum()).expand_as(clean[n]) for n in names}
    beta = torch.zeros(n_layers, ctx.model.shape.d_mlp, dtype=ctx.model.dtype, requires_grad=True)

    def move(layer: int):
        def fn(act: torch.Tensor, hook: object) -> torch.Tensor:
            return act + beta[layer] * (ablated[names[layer]] - clean[names[layer]])

        return fn

    base = corrupted["blocks.0.hook_resid_pre"]
    hooks = [("blocks.0.hook_resid_pre", lambda act, hook: base + t * (act - base))]
    hooks += [(n, move(layer)) for layer, n in enumerate(names)]
    clean_lp = None
    if ctx.metric == "kl":
        clean_lp = metrics.clean_logprobs_of(tl(batch.clean), batch).detach()
    metrics.metric(ctx.metric, tl.run_with_hooks(batch.clean, fwd_hooks=hooks), batch, clean_lp).backward()
    assert beta.grad is not None
    return beta.grad.double()


@pytest.mark.parametrize(("ablation", "metric_name"), [("resample", "logit_diff"), ("mean", "nll")])
def test_eap_neuron_scores_are_the_gradient_of_one_beta_per_neuron(ablation: str, metric_name: str) -> None:
    ctx = method_context("random:tiny@0", metric=metric_name, ablation=ablation, n=6, batch_size=4)
    scores = neuron_scores(ctx)
    expected = _neuron_beta_gradient(ctx)
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)
    assert scores.shape == (2, ctx.model.shape.d_mlp) and expected.abs().max() > 1e-3


def test_eap_ig_neuron_scores_average_the_gradient_over_interpolated_inputs() -> None:
    ctx = method_context("random:tiny@1", metric="logit_diff", n=5, batch_size=2)
    steps = 3
    expected = sum(_neuron_beta_gradient(ctx, k / steps) for k in range(1, steps + 1)) / steps
    torch.testing.assert_close(neuron_scores(ctx, steps), expected, atol=1e-6, rtol=0)
    assert (expected - _neuron_beta_gradient(ctx)).abs().max() > 1e-4  # the steps do matter


def test_neuron_circuit_metric_is_ablating_the_other_neurons_through_hooks() -> None:
    ctx = method_context("random:tiny@2", metric="logit_diff", n=5, batch_size=2)
    evaluator = NeuronEvaluator(ctx)
    tl = ctx.model.hooked_transformer
    batch = TaskBatch.from_task(ctx.task)
    _, corrupted = tl.run_with_cache(batch.corrupted)
    keep = torch.rand(2, ctx.model.shape.d_mlp, generator=torch.Generator().manual_seed(0)) > 0.7

    def metric_with(kept: torch.Tensor) -> float:
        def fn(layer: int):
            name = f"blocks.{layer}.mlp.hook_post"
            return name, lambda act, hook: torch.where(kept[layer], act, corrupted[name])

        logits = tl.run_with_hooks(batch.clean, fwd_hooks=[fn(0), fn(1)])
        return float(metrics.metric("logit_diff", logits, batch))

    with torch.no_grad():
        circuits = [keep, torch.ones_like(keep), torch.zeros_like(keep)]
        expected = [metric_with(c) for c in circuits]
    got = [float(evaluator.metric_of(keep)[0]), evaluator.metric_full, evaluator.metric_empty]
    assert got == pytest.approx(expected, abs=1e-5)
    assert abs(expected[1] - expected[2]) > 1e-2  # the neurons matter


def test_neuron_level_eap_through_discover() -> None:
    spec = JobSpec(model="random:tiny", task="random", method="eap-ig", level="neuron", top_n=20, ig_steps=2)
    result = discover(spec)
    m, g = result.metrics, result.graph
    d_mlp = load_model("random:tiny").shape.d_mlp
    assert g.graph["level"] == "neuron" and m["curve_level"] == "neuron"
    assert m["n_neurons"] == 20 == g.number_of_nodes() and g.number_of_edges() == 0
    assert m["n_neurons_total"] == 2 * d_mlp == result.full_graph.number_of_nodes()
    kept = sorted(g.nodes, key=lambda n: -abs(g.nodes[n]["score"]))
    assert all(g.nodes[n]["kind"] == "neuron" and g.nodes[n]["in_circuit"] for n in kept)
    ranked = queries.top(result.full_graph, 20)
    assert ranked["level"] == "neuron" and [n["id"] for n in ranked["nodes"]] == kept
    assert m["curve"]["n_neurons"][-1] == 2 * d_mlp and m["curve"]["faithfulness"][-1] == pytest.approx(1.0)
    with pytest.raises(ValidationError, match=r"level: 'neuron' is not available .* \(only edge, node\)"):
        ACDCParams(level="neuron")
