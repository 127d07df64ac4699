"""Refining a circuit: pruning it to a smaller size, and swaps of one edge in for one edge out at a
fixed size, each step verified exactly.

A circuit chosen from scores (top-n, a mask's largest logits, ACDC's pass) is rarely the most
faithful circuit of its size: scores are first-order, or were measured on other circuits. A
round takes the gradient of faithfulness with respect to every edge's ablation weight at the
current circuit (one patched pass and its backward pass per minibatch,
:meth:`~circuitd.patching.PatchingEngine.circuit_gradients`), so that ``-gradient`` estimates
what adding an excluded edge gains and ``+gradient`` what removing a kept one costs; it then
measures the ``width x width`` swaps of the best-estimated additions and removals exactly, with
the evaluator every circuit is judged by, and keeps the best if it is more faithful. Rounds stop
when no measured swap improves, or after ``rounds``. The size never changes, and faithfulness
never falls.

Pruning (:func:`prune_greedily`) is backward elimination by the same gradient: each step measures
the ``width`` removals estimated cheapest and drops the edge whose removal leaves the most
faithful circuit, until the circuit has the size asked for. Started from a generous selection
(say EAP-IG's top 13%), it finds smaller faithful circuits than scores or masks alone: their
ranking was measured on the full model, each removal here on the circuit that remains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from circuitd.edge_context import MethodContext
from circuitd.evaluate import Evaluator

SWAP_WIDTH = 6  # additions and removals measured per round (their width**2 swaps)
PRUNE_WIDTH = 16  # removals measured per pruning step
MetricFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Refined:
    """The refined circuit, its faithfulness after each round (the first: before any), and the
    rounds that found a better swap."""

    keep: torch.Tensor
    faithfulness: list[float] = field(default_factory=list)

    @property
    def swaps(self) -> int:
        return len(self.faithfulness) - 1


@dataclass
class Pruned:
    """The pruned circuit and its faithfulness at each size, from the start's down to the last."""

    keep: torch.Tensor
    sizes: list[int] = field(default_factory=list)
    faithfulness: list[float] = field(default_factory=list)


def faithfulness_gradient(
    ctx: MethodContext, evaluator: Evaluator, keep: torch.Tensor, metric_fns: list[MetricFn] | None = None
) -> torch.Tensor:
    """``d faithfulness / d alpha`` ``[n_edges]`` at circuit ``keep`` (alpha 1 ablates an edge),
    over the evaluator's prompts; ``metric_fns``: the task metric of each of its minibatches
    (:func:`metric_fns_of`; made here when not given)."""
    alpha = (~keep).to(ctx.model.device, ctx.model.dtype)[None]
    total = torch.zeros(keep.numel(), dtype=torch.float64, device=ctx.model.device)
    fns = metric_fns if metric_fns is not None else metric_fns_of(ctx, evaluator)
    for p, fn in zip(evaluator.prepared, fns, strict=True):
        grads = evaluator.engine.circuit_gradients(p.batch.clean, p.ablated, alpha, fn)
        total += grads[0].double() * len(p.batch)
    span = evaluator.metric_full - evaluator.metric_empty
    return (total / len(ctx.task) / (span if abs(span) > 1e-12 else 1.0)).cpu()


def metric_fns_of(ctx: MethodContext, evaluator: Evaluator) -> list[MetricFn]:
    """The task metric of each of the evaluator's minibatches, made once (``kl`` runs the clean
    model to make one)."""
    return [ctx.metric_fn(p.batch) for p in evaluator.prepared]


def best_estimated(gain: torch.Tensor, among: torch.Tensor, width: int) -> torch.Tensor:
    """The indices of the ``width`` edges of ``among`` with the largest estimated ``gain``."""
    never = torch.tensor(-torch.inf, dtype=gain.dtype)
    return torch.where(among, gain, never).argsort(descending=True)[: min(width, int(among.sum()))]


def refine_by_swaps(
    ctx: MethodContext, evaluator: Evaluator, keep: torch.Tensor, rounds: int, width: int = SWAP_WIDTH
) -> Refined:
    """Up to ``rounds`` rounds of gradient-guided, exactly measured one-for-one swaps (module
    docstring); progress and cancel between rounds."""
    keep = keep.cpu().clone()
    current = evaluator.faithfulness_of(keep[None])[0]
    refined = Refined(keep, [current])
    fns = metric_fns_of(ctx, evaluator)
    for r in range(rounds):
        ctx.check_stop()
        if bool(keep.all()) or not bool(keep.any()):
            break
        grad = faithfulness_gradient(ctx, evaluator, keep, fns)
        adds, removals = best_estimated(-grad, ~keep, width), best_estimated(grad, keep, width)
        swaps = keep.repeat(len(adds) * len(removals), 1)
        rows = torch.arange(swaps.shape[0])
        swaps[rows, adds.repeat_interleave(len(removals))] = True
        swaps[rows, removals.repeat(len(adds))] = False
        measured = evaluator.faithfulness_of(swaps)
        best = max(range(len(measured)), key=measured.__getitem__)
        ctx.report((r + 1) / rounds, f"refining: round {r + 1}, faithfulness {current:.4f}")
        if measured[best] <= current + 1e-6:
            break
        keep, current = swaps[best], measured[best]
        refined.keep = keep
        refined.faithfulness.append(current)
    return refined


def prune_greedily(
    ctx: MethodContext, evaluator: Evaluator, keep: torch.Tensor, size: int, width: int = PRUNE_WIDTH
) -> Pruned:
    """Remove edges from circuit ``keep`` one at a time until ``size`` remain, each the best of
    the ``width`` removals of largest ``+gradient`` measured exactly (module docstring);
    progress and cancel between steps."""
    keep = keep.cpu().clone()
    start = int(keep.sum())
    pruned = Pruned(keep, [start], [evaluator.faithfulness_of(keep[None])[0]])
    fns = metric_fns_of(ctx, evaluator)
    while int(keep.sum()) > size:
        ctx.check_stop()
        removals = best_estimated(faithfulness_gradient(ctx, evaluator, keep, fns), keep, width)
        trials = keep.repeat(len(removals), 1)
        trials[torch.arange(len(removals)), removals] = False
        measured = evaluator.faithfulness_of(trials)
        best = max(range(len(measured)), key=measured.__getitem__)
        keep = trials[best]
        n = int(keep.sum())
        pruned.keep = keep
        pruned.sizes.append(n)
        pruned.faithfulness.append(measured[best])
        progress = (start - n) / max(1, start - size)
        ctx.report(progress, f"pruning: {n} edges, faithfulness {measured[best]:.4f}")
    return pruned
