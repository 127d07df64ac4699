"""Incremental passes against full passes of the patching engine."""

from __future__ import annotations

import pytest
import torch

from circuitd import metrics
from circuitd.incremental import IncrementalPass
from tests.conftest import random_setup


def _answers(engine, b, ablated, keep: torch.Tensor) -> torch.Tensor:
    """Logits at the answer positions of circuits ``keep [C, n_edges]``, by full passes."""
    logits = engine.run(b.clean, ablated, (~keep).float())
    return metrics.answer_logits(logits, b)


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize(("ablation", "kept"), [("resample", 0.6), ("zero", 0.6), ("resample", 0.15)])
def test_trials_and_commits_match_full_passes(
    random_model_id: str, split: bool, ablation: str, kept: float
) -> None:
    """Dense circuits have mostly full nodes; sparse ones many answer nodes."""
    model, graph, engine, _, b = random_setup(random_model_id, split, n=4)
    ablated = engine.ablated_sources(ablation, b.corrupted)
    gen = torch.Generator().manual_seed(1)
    keep = torch.rand(graph.n_edges, generator=gen) < kept
    inputs = model.input_source(b.clean)
    torch.testing.assert_close(inputs, engine.source_outputs(b.clean)[0], atol=0, rtol=0)
    state = IncrementalPass(model, graph, inputs, ablated, b.answer_pos, keep)
    full = _answers(engine, b, ablated, keep[None])[0]
    torch.testing.assert_close(state.logits(), full, atol=5e-5, rtol=1e-5)

    for gi in reversed(range(len(graph.groups))):  # ACDC's direction: the logits first
        g = graph.groups[gi]
        block = keep[g.offset : g.stop].view(g.n_dest, g.n_src)
        kept = block.nonzero()
        if kept.shape[0] == 0:
            continue
        pick = kept[torch.randperm(kept.shape[0], generator=gen)[:3]]
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
