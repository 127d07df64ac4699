"""Incremental passes against full passes of the patching engine."""

from __future__ import annotations

import pytest
import torch

from circuitd import metrics
from circuitd.batch import TaskBatch
from circuitd.edges import EdgeGraph
from circuitd.patching import IncrementalPass, PatchingEngine, clean_prefix
from tests.support.models import BASE, random_setup, variant_model


def _answers(engine, b, ablated, keep: torch.Tensor) -> torch.Tensor:
    """Logits at the answer positions of circuits ``keep [C, n_edges]``, by full passes."""
    logits = engine.run(b.clean, ablated, (~keep).float())
    return metrics.answer_logits(logits, b)


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize(
    ("ablation", "kept", "shared"),
    [("resample", 0.6, False), ("zero", 0.6, False), ("resample", 0.15, False), ("resample", 0.6, True),
     ("resample", 0.15, True)],
)
@pytest.mark.slow
def test_trials_and_commits_match_full_passes(
    random_model_id: str, split: bool, ablation: str, kept: float, shared: bool
) -> None:
    """Dense circuits have mostly full nodes; sparse ones many answer nodes. ``shared``:
    corrupted prompts that repeat a prefix of their clean ones (one of them whole) and
    answer positions before the end, so that trials work on the live positions only."""
    model, graph, engine, _, b = random_setup(random_model_id, split, n=4)
    if shared:
        for i, k in enumerate((2, 0, 4, b.clean.shape[1])):
            b.corrupted[i, :k] = b.clean[i, :k]
        b.answer_pos = torch.tensor([5, 3, 4, 2])
    prefix = clean_prefix(ablation, b.clean, b.corrupted)
    assert (prefix is not None and prefix.tolist() == [2, 0, 4, 6]) or not shared
    state = _check_trials(model, graph, engine, b, ablation, kept)
    if shared and not model.rotary():
        assert state.live.numel() == 4 + 4 + 1 + 1  # prompt 3 is its answer alone


@pytest.mark.parametrize("variant", ["rotary", "parallel", "neox-like", "ln-pre", "inverse-layer-scale"])
def test_trials_on_other_architectures(variant: str) -> None:
    """The node math of rotary positions (whose projections keep the whole grid), parallel
    attention and MLP, LayerNorm without weights and scaled attention."""
    model = variant_model(variant)
    graph = EdgeGraph(model.shape)
    engine = PatchingEngine(model, graph)
    gen = torch.Generator().manual_seed(2)
    clean = torch.randint(0, BASE["d_vocab"], (4, 7), generator=gen)
    corrupted = torch.randint(0, BASE["d_vocab"], (4, 7), generator=gen)
    corrupted[:, :3] = clean[:, :3]
    b = TaskBatch(clean, corrupted, torch.ones_like(clean, dtype=torch.bool), torch.tensor([6, 4, 5, 6]),
                  clean[:, :1], torch.ones(4, 1, dtype=torch.bool), corrupted[:, :1],
                  torch.ones(4, 1, dtype=torch.bool))
    state = _check_trials(model, graph, engine, b, "resample", 0.5)
    # positions 3..answer of each prompt, packed; rotary models keep the whole grid
    assert state.live.numel() == (4 * 7 if model.rotary() else 4 + 2 + 3 + 4)


def _check_trials(model, graph, engine, b, ablation: str, kept: float) -> IncrementalPass:
    """Trials at every stage (logits first) and a commit after each, against full passes."""
    ablated = engine.ablated_sources(ablation, b.corrupted)
    gen = torch.Generator().manual_seed(1)
    keep = torch.rand(graph.n_edges, generator=gen) < kept
    inputs = model.input_source(b.clean)
    torch.testing.assert_close(inputs, engine.source_outputs(b.clean)[0], atol=0, rtol=0)
    prefix = clean_prefix(ablation, b.clean, b.corrupted)
    state = IncrementalPass(model, graph, inputs, ablated, b.answer_pos, keep, prefix)
    full = _answers(engine, b, ablated, keep[None])[0]
    torch.testing.assert_close(state.logits(), full, atol=5e-5, rtol=1e-5)

    for gi in reversed(range(len(graph.groups))):  # ACDC's direction: the logits first
        g = graph.groups[gi]
        block = keep[g.offset : g.stop].view(g.n_dest, g.n_src)
        kept_edges = block.nonzero()
        if kept_edges.shape[0] == 0:
            continue
        pick = kept_edges[torch.randperm(kept_edges.shape[0], generator=gen)[:3]]
        removed = torch.zeros(pick.shape[0], *block.shape, dtype=torch.bool)
        for j, (p, s) in enumerate(pick.tolist()):
            removed[j:, p, s] = True  # row j: the first j+1 picks removed
        trial = state.trial(gi, removed)
        rows = keep.repeat(removed.shape[0], 1)
        rows[:, g.offset : g.stop] &= ~removed.flatten(1)
        torch.testing.assert_close(trial.logits, _answers(engine, b, ablated, rows), atol=5e-5, rtol=1e-5)
        j = int(torch.randint(removed.shape[0], (1,), generator=gen))
        state.commit(trial, j)
        keep.copy_(rows[j])
        full = _answers(engine, b, ablated, keep[None])[0]
        torch.testing.assert_close(state.logits(), full, atol=5e-5, rtol=1e-5)
    return state
