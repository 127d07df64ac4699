"""EAP-IG over activations (``eap-ig-act``): its definition by a hand Riemann sum on
TransformerLens's own hook points, one step is EAP, a model linear in its activations gives
exact patching at any step count, and on a nonlinear one more steps bring it to patching's
ranking where EAP is blind (KL at the clean model); progress, cancel and the registry."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from circuitd import metrics
from circuitd.batch import TaskBatch
from circuitd.discover import discover
from circuitd.edge_context import MethodContext
from circuitd.edges import EdgeGraph
from circuitd.methods import METHODS
from circuitd.methods.eap import EAPIGActParams, EAPParams
from circuitd.methods.eap_ig_act_scores import activation_ig_scores, score_eap_ig_act
from circuitd.methods.eap_scores import score_eap
from circuitd.methods.patching_scores import patching_scores
from circuitd.models.loading import build_from_config
from circuitd.progress import Cancelled
from circuitd.spec import JobSpec
from circuitd.tasks import load_task_data, resolve_task
from tests.circuitd.test_patching import _source_hook, dest_hooks
from tests.support.models import method_context, random_setup


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rho (no ties in these scores)."""
    ranks = torch.stack([a.argsort().argsort(), b.argsort().argsort()]).double()
    return float(torch.corrcoef(ranks)[0, 1])


def test_one_step_is_eap(random_model_id: str) -> None:
    model, graph, _, task, _ = random_setup(random_model_id, n=6)
    ctx = MethodContext(model, graph, task, "logit_diff", batch_size=4)
    eap = score_eap(ctx, EAPParams()).scores
    one = score_eap_ig_act(ctx, EAPIGActParams(ig_steps=1)).scores
    scale = float(eap.abs().max())
    assert scale > 1e-3
    torch.testing.assert_close(one, eap, atol=1e-6 * scale, rtol=1e-6)


def test_matches_hand_riemann_sum_over_each_blocks_activations(request: pytest.FixtureRequest) -> None:
    """The definition on TransformerLens's hook points: per block (the embedding, a layer's
    heads, an MLP) and step k, the block's outputs replaced by ``corrupted + k/m (clean -
    corrupted)``, the gradients at every destination input read from zero probes; an edge's
    score is ``(corrupted_u - clean_u) . mean_k grad_v`` over its own block's steps."""
    ctx = method_context("random:tiny@7", metric="logit_diff", n=4, batch_size=4)
    steps = 3
    scores = activation_ig_scores(ctx, steps)
    tl = ctx.model.hooked_transformer
    tl.set_use_attn_result(True)
    request.addfinalizer(lambda: tl.set_use_attn_result(False))
    b = TaskBatch.from_task(ctx.task)
    _, clean = tl.run_with_cache(b.clean)
    _, corrupted = tl.run_with_cache(b.corrupted)
    n_layers = ctx.graph.shape.n_layers
    blocks = ["blocks.0.hook_resid_pre"]
    for layer in range(n_layers):
        blocks += [f"blocks.{layer}.attn.hook_result", f"blocks.{layer}.hook_mlp_out"]
    dests = [f"blocks.{layer}.hook_{x}_input" for layer in range(n_layers) for x in "qkv"]
    dests += [f"blocks.{layer}.hook_mlp_in" for layer in range(n_layers)]
    dests.append(f"blocks.{n_layers - 1}.hook_resid_post")
    mean_grad: dict[tuple[str, str], torch.Tensor] = {}  # (block, destination hook) -> mean gradient
    for block in blocks:
        for k in range(1, steps + 1):
            probes: dict[str, torch.Tensor] = {}

            def interpolate(act: torch.Tensor, hook: Any, t: float = k / steps) -> torch.Tensor:
                return corrupted[hook.name] + t * (clean[hook.name] - corrupted[hook.name])

            def probe(act: torch.Tensor, hook: Any, probes: dict[str, torch.Tensor] = probes) -> torch.Tensor:
                probes[hook.name] = torch.zeros_like(act, requires_grad=True)
                return act + probes[hook.name]

            hooks = [(block, interpolate)] + [(name, probe) for name in dests]
            with torch.enable_grad():
                metrics.metric("logit_diff", tl.run_with_hooks(b.clean, fwd_hooks=hooks), b).backward()
            for name in dests:  # no gradient: the destination reaches the metric only through the block
                grad = probes[name].grad
                grad = torch.zeros_like(probes[name]) if grad is None else grad
                mean_grad[block, name] = mean_grad.get((block, name), 0) + grad / steps
    expected = torch.zeros_like(scores)
    for i, edge in enumerate(ctx.graph.edge_names):
        src, dst = edge.split("->")
        block, head = _source_hook(src)
        diff = corrupted[block] - clean[block]
        diff = diff[:, :, head] if head is not None else diff
        (dest, dest_head), = dest_hooks(dst, n_layers)
        grad = mean_grad[block, dest]
        grad = grad[:, :, dest_head] if dest_head is not None else grad
        expected[i] = (diff * grad).sum()
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    assert int((expected.abs() > 1e-3).sum()) >= 0.5 * ctx.graph.n_edges


def linear_toy() -> MethodContext:
    """Attention-only, no LayerNorm, W_Q = W_K = 0: every attention pattern is uniform whatever
    the inputs, so the logit difference is affine in every destination input."""
    cfg = dict(n_layers=2, d_model=16, n_heads=2, d_head=4, n_ctx=16, d_vocab=23, attn_only=True,
               normalization_type=None, seed=5)
    model = build_from_config(cfg, None, None, "test:linear", dtype=torch.float64)
    with torch.no_grad():
        for block in model.hooked_transformer.blocks:
            block.attn.W_Q.zero_()
            block.attn.W_K.zero_()
    data = load_task_data("random", None, 23, n=5, seed=1, metric="logit_diff")
    task = resolve_task(data, None, 23, 16)
    return MethodContext(model, EdgeGraph(model.shape), task, "logit_diff", "resample", batch_size=3)


def test_linear_in_activations_equals_patching_at_any_steps() -> None:
    ctx = linear_toy()
    exact = patching_scores(ctx)
    assert int((exact.abs() > 1e-3).sum()) >= 10  # of 13 edges into v inputs and the logits
    for steps in (1, 3, 8):
        torch.testing.assert_close(activation_ig_scores(ctx, steps), exact, atol=1e-6, rtol=0)


def test_more_steps_rank_edges_as_patching_where_eap_cannot() -> None:
    """KL(clean || circuit) has zero gradient at the clean model, so EAP (one step) ranks edges
    by noise; the steps towards the ablated activations recover patching's ranking, and the
    ranking has settled by 8 steps. Measured: rho 0.11 (1 step), 0.82 (8), 0.81 (32)."""
    ctx = method_context("random:tiny@0", metric="kl", n=6, batch_size=6, dtype="float32")
    exact = patching_scores(ctx)
    rho = {m: rank_correlation(activation_ig_scores(ctx, m), exact) for m in (1, 8, 32)}
    assert rho[1] < 0.3
    assert rho[8] > rho[1] + 0.5 and rho[32] > rho[1] + 0.5
    assert rho[32] > 0.78 and abs(rho[32] - rho[8]) < 0.02


def test_progress_and_cancel_between_passes() -> None:
    ctx = method_context("random:tiny@0", metric="logit_diff", n=6, batch_size=3)
    seen: list[float] = []
    ctx.progress = lambda f, stage: seen.append(f)
    activation_ig_scores(ctx, steps=3, rows=4)  # 1 + 2 steps x 5 blocks = 11 circuits: 3 passes per minibatch
    assert seen == pytest.approx([i / 6 for i in range(1, 7)])
    seen.clear()
    ctx.should_stop = lambda: len(seen) >= 1
    with pytest.raises(Cancelled):
        activation_ig_scores(ctx, steps=3, rows=4)
    assert len(seen) == 1


def test_registered_and_one_step_job_is_eap() -> None:
    assert METHODS["eap-ig-act"].params is EAPIGActParams
    base = {"model": "random:tiny", "task": "random", "n_prompts": 4, "top_n": 10, "curve": False}
    act = discover(JobSpec.model_validate(base | {"method": "eap-ig-act", "ig_steps": 1}))
    eap = discover(JobSpec.model_validate(base | {"method": "eap"}))
    assert act.scores is not None and eap.scores is not None
    torch.testing.assert_close(act.scores, eap.scores, atol=1e-6 * float(eap.scores.abs().max()), rtol=0)
    assert act.graph.graph["method"] == "eap-ig-act" and act.graph.graph["params"]["ig_steps"] == 1
