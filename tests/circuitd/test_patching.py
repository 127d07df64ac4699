"""The patching engine against independent computations (its invariants)."""

from __future__ import annotations

import re

import pytest
import torch

from circuitd import metrics
from tests.support.models import random_setup


def test_all_edges_kept_is_clean(random_model_id: str) -> None:
    model, graph, engine, _, b = random_setup(random_model_id)
    ablated = engine.ablated_sources("resample", b.corrupted)
    clean = model.run(b.clean)
    # requires_grad forces every destination through the full contraction
    alpha = torch.zeros(graph.n_edges, requires_grad=True)
    torch.testing.assert_close(engine.run(b.clean, ablated, alpha), clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(engine.run(b.clean, ablated, alpha.detach()), clean, atol=1e-5, rtol=0)


@pytest.mark.parametrize("split", [True, False])
def test_all_edges_ablated_is_corrupted(random_model_id: str, split: bool) -> None:
    model, graph, engine, _, b = random_setup(random_model_id, split)
    ablated = engine.ablated_sources("resample", b.corrupted)
    out = engine.run(b.clean, ablated, torch.ones(graph.n_edges))
    torch.testing.assert_close(out, model.run(b.corrupted), atol=1e-4, rtol=0)


def test_many_circuits_in_one_pass() -> None:
    _, graph, engine, _, b = random_setup("random:tiny@4")
    ablated = engine.ablated_sources("resample", b.corrupted)
    alpha = (torch.rand(4, graph.n_edges, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    together = engine.run(b.clean, ablated, alpha)
    apart = torch.stack([engine.run(b.clean, ablated, a) for a in alpha])
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=0)


def test_mean_and_zero_ablation_values() -> None:
    _, graph, engine, _, b = random_setup("random:tiny@5")
    mean = engine.mean_sources([(b.corrupted, b.token_mask)])
    outs = engine.source_outputs(b.corrupted)
    torch.testing.assert_close(mean, outs.mean((1, 2)), atol=1e-6, rtol=0)
    mean_abl = engine.ablated_sources("mean", b.corrupted, mean)
    assert mean_abl.shape == outs.shape
    torch.testing.assert_close(mean_abl[:, 1, 2], mean)
    assert not engine.ablated_sources("zero", b.corrupted).any()


# --- brute force: one edge at a time through the model's own hooks ------------------------

_NODE = re.compile(r"^(input|a(\d+)\.h(\d+)|m(\d+)|logits)(?:<([qkv])>)?$")


def _source_hook(name: str) -> tuple[str, int | None]:
    m = _NODE.match(name)
    assert m
    if m.group(1) == "input":
        return "blocks.0.hook_resid_pre", None
    if m.group(2) is not None:
        return f"blocks.{m.group(2)}.attn.hook_result", int(m.group(3))
    return f"blocks.{m.group(4)}.hook_mlp_out", None


def dest_hooks(name: str, n_layers: int) -> list[tuple[str, int | None]]:
    m = _NODE.match(name)
    assert m
    if m.group(1) == "logits":
        return [(f"blocks.{n_layers - 1}.hook_resid_post", None)]
    if m.group(2) is not None:
        qkv = [m.group(5)] if m.group(5) else ["q", "k", "v"]
        return [(f"blocks.{m.group(2)}.hook_{x}_input", int(m.group(3))) for x in qkv]
    return [(f"blocks.{m.group(4)}.hook_mlp_in", None)]


def brute_force_edge(
    tl_model, edge: str, clean: torch.Tensor, corrupted_cache, position: int | None = None
) -> torch.Tensor:
    """The model's logits with ``edge`` ablated alone (at one token ``position``, or at all)."""
    src, dst = edge.split("->")
    src_hook, src_head = _source_hook(src)
    abl = corrupted_cache[src_hook]
    abl = abl[:, :, src_head] if src_head is not None else abl
    at = slice(None) if position is None else slice(position, position + 1)
    seen: dict[str, torch.Tensor] = {}

    def grab(act, hook):
        seen["cur"] = act[:, :, src_head].clone() if src_head is not None else act.clone()

    def patch(head):
        def fn(act, hook):
            act = act.clone()
            if head is None:
                act[:, at] += abl[:, at] - seen["cur"][:, at]
            else:
                act[:, at, head] += abl[:, at] - seen["cur"][:, at]
            return act

        return fn

    hooks = [(src_hook, grab)] + [(h, patch(head)) for h, head in dest_hooks(dst, tl_model.cfg.n_layers)]
    return tl_model.run_with_hooks(clean, fwd_hooks=hooks)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("split", [True, False])
def test_single_edge_patching_matches_brute_force(seed: int, split: bool, request) -> None:
    request_cleanup = request.addfinalizer
    model, graph, engine, _, b = random_setup(f"random:tiny@{seed}", split, n=3, seed=seed)
    tl_model = model.hooked_transformer
    tl_model.set_use_attn_result(True)  # the brute force reads TransformerLens's own head outputs
    request_cleanup(lambda: tl_model.set_use_attn_result(False))
    _, corrupted_cache = tl_model.run_with_cache(b.corrupted)
    ablated = engine.ablated_sources("resample", b.corrupted)
    one_hot = torch.eye(graph.n_edges)
    engine_out = torch.cat([engine.run(b.clean, ablated, chunk) for chunk in one_hot.split(32)])
    clean = model.run(b.clean)
    moved = 0
    for i, edge in enumerate(graph.edge_names):
        expected = brute_force_edge(tl_model, edge, b.clean, corrupted_cache)
        torch.testing.assert_close(engine_out[i], expected, atol=1e-5, rtol=0, msg=edge)
        moved += int((expected - clean).abs().max() > 1e-4)
    assert moved >= graph.n_edges * 0.9  # the check is not vacuous: almost every edge matters


# --- attribution ---------------------------------------------------------------------------


@pytest.mark.parametrize("metric_name", ["logit_diff", "prob_diff", "nll", "kl"])
def test_eap_is_the_mask_gradient(random_model_id: str, metric_name: str) -> None:
    model, graph, engine, _, b = random_setup(random_model_id, metric=metric_name)
    ablated = engine.ablated_sources("resample", b.corrupted)
    clean_lp = metrics.clean_logprobs_of(model.run(b.clean), b)

    def m(logits):
        return metrics.metric(metric_name, logits, b, clean_lp)

    alpha = torch.zeros(graph.n_edges, requires_grad=True)
    m(engine.run(b.clean, ablated, alpha)).backward()
    eap = engine.edge_gradients(b.clean, ablated, m)
    torch.testing.assert_close(eap, alpha.grad, atol=1e-5, rtol=0)
    scale = alpha.grad.abs().max()
    if metric_name == "kl":  # zero gradient at the clean model: both are rounding noise
        assert scale < 1e-6 and eap.abs().max() < 1e-6
    else:
        assert scale > 1e-5
        assert (eap - alpha.grad).abs().max() <= 1e-4 * scale + 1e-8  # also tight relative to size


def test_eap_ig_matches_hand_riemann_sum(request) -> None:
    """EAP-IG (inputs) by its definition, with TransformerLens hooks and autograd."""
    model, graph, engine, _, b = random_setup("random:tiny@7", n=4)
    tl = model.hooked_transformer
    steps = 4
    ablated = engine.ablated_sources("resample", b.corrupted)

    def m(logits):
        return metrics.metric("logit_diff", logits, b)

    ig = engine.edge_gradients(b.clean, ablated, m, baseline=ablated[0], steps=steps)
    tl.set_use_attn_result(True)
    request.addfinalizer(lambda: tl.set_use_attn_result(False))
    _, clean_cache = tl.run_with_cache(b.clean)
    _, corr_cache = tl.run_with_cache(b.corrupted)
    grad_sum: dict[str, torch.Tensor] = {}
    for k in range(1, steps + 1):
        acts: dict[str, torch.Tensor] = {}

        def interp(act, hook, t=k / steps):
            return corr_cache[hook.name] + t * (act - corr_cache[hook.name])

        def keep(act, hook, acts=acts):
            act.requires_grad_(True)
            acts[hook.name] = act
            return act

        names = [f"blocks.{lay}.hook_{x}_input" for lay in range(2) for x in "qkv"]
        names += ["blocks.0.hook_mlp_in", "blocks.1.hook_mlp_in", "blocks.1.hook_resid_post"]
        with torch.enable_grad():
            emb = clean_cache["blocks.0.hook_resid_pre"].clone().requires_grad_(True)
            hooks = [("blocks.0.hook_resid_pre", lambda a, hook, emb=emb: interp(emb, hook))]
            hooks += [(n, keep) for n in names]
            out = tl.run_with_hooks(b.clean, fwd_hooks=hooks)
            grads = torch.autograd.grad(m(out), [acts[n] for n in names])
        for n, g in zip(names, grads, strict=True):
            grad_sum[n] = grad_sum.get(n, 0) + g / steps
    for i, edge in enumerate(graph.edge_names):
        src, dst = edge.split("->")
        hook, head = _source_hook(src)
        d = corr_cache[hook] - clean_cache[hook]
        d = d[:, :, head] if head is not None else d
        (dhook, dhead), = dest_hooks(dst, 2)
        g = grad_sum[dhook]
        g = g[:, :, dhead] if dhead is not None else g
        torch.testing.assert_close(ig[i], (d * g).sum(), atol=1e-5, rtol=0, msg=edge)


def use_gradient_path(model, path: str, monkeypatch) -> None:
    """Send EAP down one of its three ways to the destination gradients: the adapter's lean
    pass (the default), hook points with shared head inputs, or per-head probes."""
    if path != "lean":
        monkeypatch.setattr(model, "lean_pass_supported", lambda: False)
    if path == "split":
        monkeypatch.setattr(model, "shared_head_input_grads_supported", lambda: False)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("path", ["shared", "split"])
def test_gradient_paths_agree(steps: int, path: str, monkeypatch) -> None:
    """The hook-point paths (for architectures the lean pass does not cover) give the lean
    pass's scores."""
    model, graph, engine, _, b = random_setup("random:small@6", n=4)
    ablated = engine.ablated_sources("resample", b.corrupted)

    def m(logits):
        return metrics.metric("logit_diff", logits, b)

    lean = engine.edge_gradients(b.clean, ablated, m, baseline=ablated[0], steps=steps)
    use_gradient_path(model, path, monkeypatch)
    other = engine.edge_gradients(b.clean, ablated, m, baseline=ablated[0], steps=steps)
    torch.testing.assert_close(other, lean, atol=1e-5, rtol=0)
    assert lean.abs().max() > 1e-3


@pytest.mark.parametrize("metric_name", ["logit_diff", "prob_diff", "nll"])
@pytest.mark.parametrize("path", ["lean", "shared", "split"])
def test_eap_at_answer_positions_only_equals_full_logits(metric_name: str, path: str, monkeypatch) -> None:
    """The clean pass that unembeds only the answer positions gives the same scores as the one
    that unembeds every position, on every gradient path, for plain EAP and EAP-IG."""
    model, graph, engine, _, b = random_setup("random:small@2", n=5, metric=metric_name)
    use_gradient_path(model, path, monkeypatch)
    ablated = engine.ablated_sources("resample", b.corrupted)

    def full(logits):
        return metrics.metric(metric_name, logits, b)

    def at_answers(logits):
        assert logits.shape == (len(b), model.shape.d_vocab)
        return metrics.per_prompt_at_answers(metric_name, logits, b).mean(-1)

    for steps in (1, 3):
        want = engine.edge_gradients(b.clean, ablated, full, baseline=ablated[0], steps=steps)
        got = engine.edge_gradients(
            b.clean, ablated, at_answers, baseline=ablated[0], steps=steps, answer_pos=b.answer_pos
        )
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        assert want.abs().max() > 1e-4
