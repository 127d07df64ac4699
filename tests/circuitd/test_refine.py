"""Refining a circuit by exactly measured swaps (``refine_rounds``) and pruning it by exactly
measured removals (``prune_to``): the gradient that guides both against finite differences, the
size kept and faithfulness never lost, a broken known circuit mended, pruning equal to brute-force
backward elimination and finding a known circuit inside the whole graph, and both options through
the workflow."""

from __future__ import annotations

import pytest
import torch

from circuitd import metrics
from circuitd.edge_context import MethodContext
from circuitd.evaluate import Evaluator
from circuitd.refine import faithfulness_gradient, prune_greedily, refine_by_swaps
from tests.support.models import method_context


def known_model_context(name: str) -> tuple[MethodContext, Evaluator]:
    """A zoo known-circuit model (float64) with its shipped task, and its evaluator."""
    from circuitd.edges import EdgeGraph
    from circuitd.jobs import build_task
    from circuitd.models.registry import load_model
    from circuitd.models.zoo_known import shipped_task
    from circuitd.spec import JobSpec

    spec = JobSpec(model=f"zoo:{name}", task=shipped_task(name), method="eap")
    model = load_model(f"zoo:{name}", dtype="float64")
    task = build_task(spec, model, None)
    ctx = MethodContext(model, EdgeGraph(model.shape), task, task.metric, batch_size=8)
    return ctx, Evaluator(ctx)


def test_the_gradient_is_the_finite_difference_of_faithfulness() -> None:
    ctx = method_context("random:tiny@2", metric="logit_diff", n=5, batch_size=3, dtype="float64")
    ev = Evaluator(ctx)
    keep = torch.rand(ctx.graph.n_edges, generator=torch.Generator().manual_seed(0)) > 0.3
    grad = faithfulness_gradient(ctx, ev, keep)
    alpha0 = (~keep).double()
    span = ev.metric_full - ev.metric_empty
    h = 1e-3  # the metrics are float32: a smaller step is lost in their rounding

    def faithfulness(alpha: torch.Tensor) -> float:
        total = 0.0
        for p in ev.prepared:
            logits = ev.engine.run(p.batch.clean, p.ablated, alpha)
            total += float(metrics.per_prompt(ctx.metric, logits, p.batch).double().sum())
        return (total / len(ctx.task) - ev.metric_empty) / span

    for e in range(0, ctx.graph.n_edges, 9):
        step = torch.zeros_like(alpha0)
        step[e] = h
        numeric = (faithfulness(alpha0 + step) - faithfulness(alpha0 - step)) / (2 * h)
        assert grad[e].item() == pytest.approx(numeric, rel=1e-2, abs=1e-3), ctx.graph.edge_names[e]
    assert grad.abs().max() > 1e-3


def test_swaps_keep_the_size_and_never_lose_faithfulness() -> None:
    ctx = method_context("zoo:synth", metric="logit_diff", n=16, batch_size=16)
    ev = Evaluator(ctx)
    from circuitd.methods.eap_scores import edge_scores
    from circuitd.selection import top_n

    keep = top_n(edge_scores(ctx, 1).float(), 40)
    refined = refine_by_swaps(ctx, ev, keep, rounds=4)
    f = refined.faithfulness
    assert int(refined.keep.sum()) == 40
    assert f[0] == pytest.approx(ev.faithfulness_of(keep[None])[0])
    assert f[-1] == pytest.approx(ev.faithfulness_of(refined.keep[None])[0])
    assert all(b > a for a, b in zip(f, f[1:], strict=False)) and refined.swaps >= 1
    assert f[-1] > f[0] + 0.02


def test_a_broken_known_circuit_is_mended() -> None:
    """zoo:known-copy's 3-edge circuit with one edge swapped for a wrong one: one round finds
    the swap back, and nothing improves on the known circuit."""
    ctx, ev = known_model_context("known-copy")
    graph = ctx.graph
    known = graph.index_of(["input->a0.h0<v>", "a0.h0->a1.h0<v>", "a1.h0->logits"])
    broken = torch.zeros(graph.n_edges, dtype=torch.bool)
    broken[known[:2] + graph.index_of(["a0.h1->logits"])] = True
    refined = refine_by_swaps(ctx, ev, broken, rounds=5)
    assert refined.faithfulness[0] == pytest.approx(0.0, abs=1e-6)
    assert sorted(torch.nonzero(refined.keep).flatten().tolist()) == sorted(known)
    assert refined.faithfulness == pytest.approx([0.0, 1.0], abs=1e-6) and refined.swaps == 1


def test_refine_rounds_through_the_workflow() -> None:
    from pydantic import ValidationError

    from circuitd.discover import discover
    from circuitd.spec import JobSpec

    common = {"model": "zoo:synth", "task": "ioi", "n_prompts": 16, "curve": False}
    plain = discover(JobSpec.model_validate({**common, "method": "eap", "top_n": 60})).metrics
    result = discover(JobSpec.model_validate({**common, "method": "eap", "top_n": 60, "refine_rounds": 3}))
    m = result.metrics
    assert m["n_edges"] == plain["n_edges"]
    assert m["refine_faithfulness"][0] == pytest.approx(plain["faithfulness"])
    assert m["faithfulness"] == pytest.approx(m["refine_faithfulness"][-1], abs=1e-5)
    assert m["faithfulness"] > plain["faithfulness"] and 1 <= m["refine_swaps"] <= 3
    with pytest.raises(ValidationError, match="refine_rounds: swaps refine edge-level circuits"):
        JobSpec.model_validate({**common, "method": "eap", "level": "node", "refine_rounds": 2})


def test_pruning_with_every_removal_measured_is_brute_force_backward_elimination() -> None:
    """With the width covering every kept edge, each step is the brute-force best removal: every
    single-edge removal measured, the most faithful kept."""
    ctx = method_context("random:tiny@2", metric="logit_diff", n=5, batch_size=3, dtype="float64")
    ev = Evaluator(ctx)
    from circuitd.methods.eap_scores import edge_scores
    from circuitd.selection import select

    start = select(ctx.graph, edge_scores(ctx, 1).float(), n=30)  # connected: no removal is free
    size = int(start.sum()) - 8
    pruned = prune_greedily(ctx, ev, start, size, width=ctx.graph.n_edges)

    keep, trail = start.clone(), [ev.faithfulness_of(start[None])[0]]
    while int(keep.sum()) > size:
        kept = torch.nonzero(keep).flatten().tolist()
        trials = keep.repeat(len(kept), 1)
        trials[torch.arange(len(kept)), torch.tensor(kept)] = False
        f = ev.faithfulness_of(trials)
        best = max(range(len(f)), key=f.__getitem__)
        keep = trials[best]
        trail.append(f[best])
    assert pruned.sizes == list(range(size + 8, size - 1, -1))
    assert pruned.faithfulness == pytest.approx(trail, abs=1e-9)
    assert torch.equal(pruned.keep, keep)
    assert pruned.faithfulness[-1] == pytest.approx(ev.faithfulness_of(pruned.keep[None])[0], abs=1e-12)


def test_pruning_the_whole_graph_finds_the_known_circuit() -> None:
    """zoo:known-induction's every edge pruned to the known circuit's 5: exactly those edges
    remain, and no removal on the way lost faithfulness."""
    from circuitd.models.zoo_known import known_circuit_path
    from circuitd.roc import KnownCircuit

    known = KnownCircuit.read(known_circuit_path("known-induction")).edges
    ctx, ev = known_model_context("known-induction")
    graph = ctx.graph
    every = torch.ones(graph.n_edges, dtype=torch.bool)
    pruned = prune_greedily(ctx, ev, every, len(known))
    kept = [graph.edge_names[i] for i in torch.nonzero(pruned.keep).flatten().tolist()]
    assert sorted(kept) == sorted(known)
    assert len(pruned.faithfulness) == graph.n_edges - len(known) + 1
    assert min(pruned.faithfulness) == pytest.approx(1.0, abs=1e-6)
    one_less = pruned.keep.repeat(len(known), 1)
    one_less[torch.arange(len(known)), torch.tensor(graph.index_of(list(known)))] = False
    assert max(ev.faithfulness_of(one_less)) < 0.9  # every known edge is needed


def test_prune_to_through_the_workflow(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from circuitd.discover import discover
    from circuitd.errors import CircuitdError
    from circuitd.settings import get_settings
    from circuitd.spec import JobSpec

    common = {"model": "zoo:synth", "task": "ioi", "n_prompts": 16, "curve": False, "method": "eap"}
    plain = discover(JobSpec.model_validate({**common, "top_n": 40})).metrics
    m = discover(JobSpec.model_validate({**common, "top_n": 60, "prune_to": 40, "refine_rounds": 2})).metrics
    sizes = m["prune_sizes"]  # from the top 60 less any dangling edges
    assert m["n_edges"] == 40 and sizes == list(range(sizes[0], 39, -1)) and 40 < sizes[0] <= 60
    assert m["refine_faithfulness"][0] == pytest.approx(m["prune_faithfulness"][-1], abs=1e-5)
    assert m["faithfulness"] == pytest.approx(m["refine_faithfulness"][-1], abs=1e-5)
    assert m["faithfulness"] > plain["faithfulness"] + 0.05  # pruned from 60 beats the top 40
    with pytest.raises(ValidationError, match="prune_to: pruning removes edges from edge-level circuits"):
        JobSpec.model_validate({**common, "level": "node", "prune_to": 2})
    with pytest.raises(ValidationError, match="prune_to: 60 is not below top_n"):
        JobSpec.model_validate({**common, "top_n": 60, "prune_to": 60})
    with pytest.raises(CircuitdError, match="prune_to: 9 is not below the selected circuit's 0 edges"):
        discover(JobSpec.model_validate({**common, "threshold": 1e9, "prune_to": 9}))
    monkeypatch.setenv("CIRCUITD_MAX_PRUNE_STEPS", "5")
    get_settings.cache_clear()
    try:
        over = "may remove 20 edges, more than CIRCUITD_MAX_PRUNE_STEPS=5"
        with pytest.raises(ValidationError, match=over):
            JobSpec.model_validate({**common, "top_n": 60, "prune_to": 40})
        too_many = r"removing \d+ edges exceeds CIRCUITD_MAX_PRUNE_STEPS=5 \(select fewer"
        with pytest.raises(CircuitdError, match=too_many):  # the default selection: known once scored
            discover(JobSpec.model_validate({**common, "prune_to": 40}))
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
