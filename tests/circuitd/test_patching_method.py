"""Exact edge patching (``patching``) against brute force: every edge ablated alone in a full
patched pass of the engine's plain path (``PatchingEngine.run``, no incremental or cached
passes), on both of the method's paths (incremental passes, and cached prefixes for
grouped-query models); its bound, progress and cancel."""

from __future__ import annotations

import pytest
import torch

from circuitd import metrics
from circuitd.batch import TaskBatch
from circuitd.edge_context import MethodContext
from circuitd.edges import EdgeGraph
from circuitd.errors import CircuitdError
from circuitd.methods import METHODS
from circuitd.methods.edge_patching import PatchingParams
from circuitd.methods.patching_scores import incremental_supported, patching_scores, score_patching
from circuitd.models.loading import build_from_config
from circuitd.models.registry import load_model
from circuitd.patching import PatchingEngine
from circuitd.progress import Cancelled
from circuitd.settings import get_settings
from circuitd.tasks import load_task_data, resolve_task
from tests.support.models import method_context

GQA = dict(  # 4 query heads sharing 2 key/value heads: no node math, so no incremental passes
    n_layers=2, d_model=32, n_heads=4, d_head=8, n_key_value_heads=2, d_mlp=48, n_ctx=16, d_vocab=37,
    act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8,
    gated_mlp=True, final_rms=True, seed=3,
)


def brute_force(ctx: MethodContext) -> torch.Tensor:
    """``metric(full model minus edge e) - metric(full model)`` for every edge, each a full
    patched pass with one edge's weight 1, over all prompts at once."""
    engine = PatchingEngine(ctx.model, ctx.graph)
    b = TaskBatch.from_task(ctx.task)
    mean = engine.mean_sources([(b.corrupted, b.token_mask)])
    ablated = engine.ablated_sources(ctx.ablation, b.corrupted, mean)
    with torch.no_grad():
        clean = ctx.model.run(b.clean)
        clean_lp = metrics.clean_logprobs_of(clean, b) if ctx.metric == "kl" else None
        full = metrics.metric(ctx.metric, clean, b, clean_lp)
        one_hot = torch.eye(ctx.graph.n_edges, dtype=ctx.model.dtype)
        ablated_one = [metrics.metric(ctx.metric, engine.run(b.clean, ablated, rows), b, clean_lp)
                       for rows in one_hot.split(16)]
    return (torch.cat(ablated_one) - full).to(ctx.model.dtype)  # the metrics are float32


@pytest.mark.parametrize(("ablation", "metric"), [("resample", "logit_diff"), ("mean", "logit_diff"),
                                                  ("resample", "kl")])
def test_scores_are_brute_force_single_edge_patching(ablation: str, metric: str) -> None:
    ctx = method_context("random:tiny@1", metric=metric, ablation=ablation, n=5, batch_size=2)
    assert incremental_supported(ctx)
    expected = brute_force(ctx)
    for rows in (None, 7):  # the memory budget's trial size, and groups split over several trials
        torch.testing.assert_close(patching_scores(ctx, rows=rows), expected, atol=1e-5, rtol=0)
    assert int((expected.abs() > 1e-4).sum()) >= 0.8 * ctx.graph.n_edges  # almost every edge matters


def test_grouped_query_model_runs_from_cached_prefixes() -> None:
    model = build_from_config(GQA, None, None, "test:gqa", dtype=torch.float64)
    graph = EdgeGraph(model.shape)
    data = load_task_data("random", None, model.shape.d_vocab, n=4, seed=2, metric="logit_diff")
    task = resolve_task(data, None, model.shape.d_vocab, model.shape.n_ctx)
    ctx = MethodContext(model, graph, task, "logit_diff", "resample", batch_size=3)
    assert graph.kv_grouped and not incremental_supported(ctx)
    expected = brute_force(ctx)
    torch.testing.assert_close(patching_scores(ctx, rows=5), expected, atol=1e-5, rtol=0)
    assert int((expected.abs() > 1e-4).sum()) >= 0.8 * graph.n_edges
    assert score_patching(ctx, PatchingParams()).info == {"incremental": False}


def test_eap_is_the_first_order_estimate_of_the_same_quantity() -> None:
    """EAP and patching agree in sign convention: ablating an edge that helps the metric gives
    a negative score in both, and on this model they rank the edges alike."""
    from circuitd.methods.eap_scores import edge_scores

    ctx = method_context("random:tiny@1", metric="logit_diff", n=5, batch_size=5)
    exact, eap = patching_scores(ctx), edge_scores(ctx, steps=1)
    big = exact.abs() > 0.2 * exact.abs().max()
    assert int(big.sum()) >= 5
    assert bool((torch.sign(exact[big]) == torch.sign(eap[big])).float().mean() >= 0.8)
    assert float(torch.corrcoef(torch.stack([exact, eap]))[0, 1]) > 0.7


def test_trials_over_the_setting_are_refused(settings_env: pytest.MonkeyPatch) -> None:
    ctx = method_context("random:tiny@0", metric="logit_diff", n=5)
    trials = ctx.graph.n_edges * 5  # 110 edges x 5 prompts
    settings_env.setenv("CIRCUITD_MAX_PATCHING_TRIALS", str(trials - 1))
    get_settings.cache_clear()
    refusal = f"550 single-edge trials, over CIRCUITD_MAX_PATCHING_TRIALS={trials - 1}"
    with pytest.raises(CircuitdError, match=refusal):
        patching_scores(ctx)
    settings_env.setenv("CIRCUITD_MAX_PATCHING_TRIALS", str(trials))
    get_settings.cache_clear()
    assert patching_scores(ctx).shape == (110,)


def test_progress_after_every_trial_and_cancel_between_them() -> None:
    seen: list[tuple[float, str]] = []
    ctx = method_context("random:tiny@0", metric="logit_diff", n=6, batch_size=3)
    ctx.progress = lambda f, stage: seen.append((f, stage))
    patching_scores(ctx, rows=16)
    # per minibatch: logits 1 trial, m1 1, a1 72 edges in 5, m0 1, a0 1: 9; two minibatches
    assert [f for f, _ in seen] == pytest.approx([i / 18 for i in range(1, 19)])
    assert {stage for _, stage in seen} == {"patching edges"}
    seen.clear()
    ctx.should_stop = lambda: len(seen) >= 1  # trips once the first trial is done
    with pytest.raises(Cancelled):
        patching_scores(ctx, rows=16)
    assert len(seen) == 1


def test_registered_and_run_by_the_edge_workflow() -> None:
    from circuitd.discover import discover
    from circuitd.spec import JobSpec

    spec = JobSpec.model_validate({"model": "random:tiny", "task": "random", "n_prompts": 4,
                                   "method": "patching", "top_n": 10, "curve": False, "batch_size": 4})
    assert isinstance(spec.params, PatchingParams) and METHODS["patching"].params is PatchingParams
    result = discover(spec)
    assert result.scores is not None and result.metrics["incremental"] is True
    assert 0 < result.metrics["n_edges"] <= 10 and result.metrics["n_edges_total"] == 110
    names = EdgeGraph(load_model("random:tiny").shape).edge_names
    top = {names[i] for i in result.scores.abs().topk(10).indices.tolist()}
    assert {name for _, _, name in result.graph.edges(data="name")} <= top  # dangling ones pruned
