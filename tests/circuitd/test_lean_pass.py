"""The adapter's lean pass against TransformerLens's own forward pass, on the
architectures it claims (source values are the unpatched model's)."""

from __future__ import annotations

import pytest
import torch

from circuitd import metrics
from circuitd.batch import TaskBatch
from circuitd.edges import EdgeGraph
from circuitd.patching import PatchingEngine
from circuitd.patching.engine import BufferSink, source_hooks
from circuitd.tasks import load_task_data, resolve_task
from tests.support.models import BASE, VARIANTS, variant_model


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lean_pass_is_the_model(variant: str) -> None:
    """Every source output and the logits equal those of the hooked TransformerLens pass."""
    model = variant_model(variant)
    assert model.lean_pass_supported()
    graph = EdgeGraph(model.shape)
    engine = PatchingEngine(model, graph)
    tokens = torch.randint(0, BASE["d_vocab"], (3, 9), generator=torch.Generator().manual_seed(0))
    want = engine.source_buffer(tokens)
    with torch.no_grad(), model.shared_head_inputs():
        logits = model.run(tokens, source_hooks(model, graph, BufferSink(want)))
    got = engine.source_buffer(tokens)
    with torch.no_grad():
        lean = model.lean_pass(tokens, sources=got)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.logits_of(lean.final), logits, atol=1e-5, rtol=0)
    assert want.abs().amax((1, 2, 3)).min() > 1e-3  # every source is non-trivial


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lean_eap_is_the_probed_gradient(variant: str, monkeypatch) -> None:
    """EAP and EAP-IG on the lean pass equal the per-head probe path (gradients read through
    TransformerLens's own hook points, no shortcut) on every claimed architecture."""
    model = variant_model(variant, seed=2)
    graph = EdgeGraph(model.shape)
    engine = PatchingEngine(model, graph)
    data = load_task_data("random", None, BASE["d_vocab"], n=4, seed=3, length=8)
    b = TaskBatch.from_task(resolve_task(data, None, BASE["d_vocab"], BASE["n_ctx"]))
    ablated = engine.ablated_sources("resample", b.corrupted)

    def m(logits):
        return metrics.metric("logit_diff", logits, b)

    lean = [engine.edge_gradients(b.clean, ablated, m, baseline=ablated[0], steps=s) for s in (1, 3)]
    monkeypatch.setattr(model, "lean_pass_supported", lambda: False)
    monkeypatch.setattr(model, "shared_head_input_grads_supported", lambda: False)
    probed = [engine.edge_gradients(b.clean, ablated, m, baseline=ablated[0], steps=s) for s in (1, 3)]
    for got, want in zip(lean, probed, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert want.abs().max() > 1e-3
