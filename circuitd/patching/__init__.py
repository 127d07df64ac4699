"""The one patching engine. Every edge method runs on it.

Edge weights ``alpha`` over the flat edge index say how much of each edge is ablated:
0 keeps the edge, 1 removes it. A destination's input becomes

    in_v = in_v(current) + sum_u alpha[u->v] * (ablated_u - current_u)

where ``current_u`` is source u's output in this very pass. Source outputs are collected
as the pass reaches them (``diff = ablated - current``), and each destination hook adds
its block of ``alpha`` contracted with that stack. ``alpha`` may carry a leading circuit
axis ``[C, n_edges]``: the batch is repeated C times and every circuit runs in one pass.

The gradient of a metric with respect to ``alpha`` at zero is edge attribution patching;
``edge_gradients`` computes it for every edge from the gradients at the destination
inputs, which costs one backward pass and one matrix product per destination group.

Modules: :mod:`~circuitd.patching.engine` (hooks, ablated values, ``run``),
:mod:`~circuitd.patching.prefix` (``cached_pass``, ``run_from``),
:mod:`~circuitd.patching.gradients` (``edge_gradients``), and
:mod:`~circuitd.patching.incremental` (incremental passes of one circuit).
"""

from __future__ import annotations

from circuitd.patching.engine import clean_prefix
from circuitd.patching.gradients import EdgeGradients
from circuitd.patching.incremental import IncrementalPass, Trial
from circuitd.patching.prefix import CachedPass, PrefixPasses


class PatchingEngine(PrefixPasses, EdgeGradients):
    """Runs a model with any set of edges ablated, for many circuits at once."""


__all__ = ["CachedPass", "IncrementalPass", "PatchingEngine", "Trial", "clean_prefix"]
