"""EAP and EAP-IG as methods: minibatching, ablations, the one-step identity."""

from __future__ import annotations

import pytest
import torch

from circuitd import metrics
from circuitd.edge_context import MethodContext
from circuitd.methods.eap import EAPIGParams, EAPParams
from circuitd.methods.eap_scores import score_eap, score_eap_ig
from tests.support.models import random_setup


@pytest.mark.parametrize("ablation", ["resample", "zero", "mean"])
@pytest.mark.parametrize("metric_name", ["logit_diff", "prob_diff", "nll"])
def test_eap_method_is_dataset_mask_gradient(ablation: str, metric_name: str) -> None:
    """Minibatches of 2 over 5 prompts give the gradient of the whole-dataset mean metric."""
    model, graph, engine, task, b = random_setup("random:tiny@3", n=5, metric=metric_name)
    ctx = MethodContext(model, graph, task, metric_name, ablation, batch_size=2)
    scores = score_eap(ctx, EAPParams()).scores
    mean = engine.mean_sources([(b.corrupted, b.token_mask)])
    ablated = engine.ablated_sources(ablation, b.corrupted, mean)
    alpha = torch.zeros(graph.n_edges, requires_grad=True)
    metrics.metric(metric_name, engine.run(b.clean, ablated, alpha), b).backward()
    torch.testing.assert_close(scores, alpha.grad, atol=1e-5, rtol=0)
    assert alpha.grad.abs().max() > 1e-4


def test_eap_ig_one_step_is_eap(random_model_id: str) -> None:
    model, graph, _, task, _ = random_setup(random_model_id, n=6)
    ctx = MethodContext(model, graph, task, "logit_diff", batch_size=4)
    eap = score_eap(ctx, EAPParams()).scores
    ig1 = score_eap_ig(ctx, EAPIGParams(ig_steps=1)).scores
    torch.testing.assert_close(ig1, eap, atol=1e-7, rtol=0)
    ig5 = score_eap_ig(ctx, EAPIGParams(ig_steps=5)).scores
    assert (ig5 - eap).abs().max() > 1e-4  # more steps do change the scores


def test_progress_and_cancel() -> None:
    from circuitd.progress import Cancelled

    model, graph, _, task, _ = random_setup("random:tiny@0", n=6)
    seen: list[float] = []
    ctx = MethodContext(model, graph, task, "logit_diff", batch_size=2, progress=lambda f, s: seen.append(f))
    score_eap(ctx, EAPParams())
    assert seen == pytest.approx([1 / 3, 2 / 3, 1.0])
    calls = iter([False, True])
    ctx = MethodContext(model, graph, task, "logit_diff", batch_size=2, should_stop=lambda: next(calls))
    with pytest.raises(Cancelled):
        score_eap(ctx, EAPParams())
