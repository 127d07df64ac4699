"""Exact edge patching: its parameters and registry entry. The scores are computed in
:mod:`circuitd.methods.patching_scores` (imported when the method runs: this module imports
no torch)."""

from __future__ import annotations

from typing import ClassVar

from circuitd.methods.contract import EdgeMethod, EdgeParams, NodeScoring


class PatchingParams(EdgeParams):
    """Exact patching has no options of its own: one single-edge patched pass per edge and
    prompt, bounded by ``CIRCUITD_MAX_PATCHING_TRIALS`` (edges x prompts)."""

    node_scoring: ClassVar[NodeScoring | None] = "exact"  # node level: each node ablated alone
    position_aware: ClassVar[bool] = True  # one trial per edge and position (cached prefixes)


PATCHING = EdgeMethod(
    "patching", "exact edge patching: the metric change of ablating each edge alone", PatchingParams,
    "circuitd.methods.patching_scores:score_patching",
)
