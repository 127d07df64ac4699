"""Edge Pruning's training (Bhaskar et al. 2024): one mask logit per edge, optimised on the
patching engine.

A destination reads ``sum_u m_e * out_u + (1 - m_e) * ablated_u`` over its sources: the
engine's patched pass (:meth:`PatchingEngine.run`) with ``alpha = 1 - m``, which is
differentiable in ``alpha``, so no other forward is needed. Each step takes one minibatch
(cycling), samples masks from the logits (hard-concrete: stretched and clipped
binary-concrete noise, Louizos et al. 2018; sigmoid: ``sigmoid(logit)``, no noise) and
minimises

    loss = faithfulness_loss + lambda_1 * d + lambda_2 * d**2,   d = (E[kept] - goal_t) / n_edges

``E[kept]`` is the expected number of kept edges (the expected L0 norm under hard-concrete,
the sum of the masks under sigmoid); ``goal_t`` falls linearly from every edge to the target
over the first 40% of the steps, then stays. The multipliers rise by gradient ascent
(``lambda_1 += c * d``, ``lambda_2 += c * d**2``, ``c = 100 * lr``) so that the constraint is
met rather than traded against faithfulness; ``lambda_1`` starts at 0 and ``lambda_2`` at
``lambda_init``, a strong quadratic term that keeps the count on its schedule (a linear
term alone lags it, overshoots and cuts edges that never come back).

``faithfulness_loss`` is the distance to the full model, normalised so that the empty
circuit is about 1: for ``kl`` the mean KL(clean || circuit) over the empty circuit's mean;
for the other metrics the mean over prompts of ``((m(circuit) - m(full)) / (M(full) -
M(empty)))**2``, ``m`` per prompt and ``M`` the task means, so that every prompt keeps its own
metric, not just the mean.

The scores are each edge's probability of a nonzero mask; the circuit is the target's number
of edges of largest logit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from circuitd import metrics
from circuitd.batch import TaskBatch, iter_batches
from circuitd.edge_context import MethodContext, MethodResult
from circuitd.errors import CircuitdError
from circuitd.methods.contract import DEFAULT_TOP_FRACTION
from circuitd.patching import PatchingEngine

if TYPE_CHECKING:
    from circuitd.methods.edge_pruning import EdgePruningParams

HC_BETA, HC_LOW, HC_HIGH = 2 / 3, -0.1, 1.1  # hard-concrete temperature and stretch (Louizos et al.)
INIT_LOGIT = 3.0  # every edge starts at mask 1 without noise, nonzero with probability 0.99: the full model
WARMUP = 0.4  # share of the steps over which the target falls from every edge to its final value
REPORT_EVERY = 5  # steps between progress reports
LAMBDA_LR = 100.0  # the multipliers' ascent rate, in units of the masks' learning rate
MIN_DEFAULT_TARGET = 16  # the default target's floor, in edges (target_edge_count)


def target_edge_count(n_edges: int, params: EdgePruningParams) -> int:
    """The edges the circuit keeps: ``target_edges``; at most ``(1 - target_sparsity) * n_edges``;
    or by default at most 5% of the edges but at least ``MIN_DEFAULT_TARGET`` (a small model's 5%
    is a handful of edges, fewer than any mechanism needs, and the masks then collapse)."""
    if params.target_edges is not None:
        if params.target_edges > n_edges:
            raise CircuitdError(f"target_edges: {params.target_edges} exceeds the graph's {n_edges} edges")
        return params.target_edges
    if params.target_sparsity is not None:
        return max(1, math.floor((1 - params.target_sparsity) * n_edges + 1e-9))
    return min(n_edges, max(MIN_DEFAULT_TARGET, math.floor(DEFAULT_TOP_FRACTION * n_edges + 1e-9)))


def keep_probability(logits: torch.Tensor, relaxation: str) -> torch.Tensor:
    """Each edge's probability of a nonzero mask (hard-concrete) or its mask (sigmoid): the
    terms of the expected kept-edge count, differentiable in ``logits``."""
    if relaxation == "hard-concrete":
        return torch.sigmoid(logits - HC_BETA * math.log(-HC_LOW / HC_HIGH))
    return torch.sigmoid(logits)


def sample_masks(logits: torch.Tensor, relaxation: str, noise: torch.Generator) -> torch.Tensor:
    """Training masks in [0, 1]: hard-concrete samples (exactly 0 or 1 with positive
    probability), or the sigmoid of the logits."""
    if relaxation != "hard-concrete":
        return torch.sigmoid(logits)
    u = torch.rand(logits.shape, generator=noise, dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
    u = u.to(logits.device, logits.dtype)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + logits) / HC_BETA)
    return (s * (HC_HIGH - HC_LOW) + HC_LOW).clamp(0, 1)


def deterministic_masks(logits: torch.Tensor, relaxation: str) -> torch.Tensor:
    """The masks without noise: the hard-concrete's stretched, clipped sigmoid, or the sigmoid."""
    if relaxation != "hard-concrete":
        return torch.sigmoid(logits)
    return (torch.sigmoid(logits) * (HC_HIGH - HC_LOW) + HC_LOW).clamp(0, 1)


@dataclass
class _Prepared:
    """One minibatch: its ablated sources and the full model's reference (per-prompt metric
    ``[B]``, or the clean log-probabilities ``[B, V]`` for ``kl``)."""

    batch: TaskBatch
    ablated: torch.Tensor
    reference: torch.Tensor


class FaithfulnessLoss:
    """The distance of a circuit's output to the full model's on each minibatch, normalised by
    the empty circuit's (module docstring)."""

    def __init__(self, ctx: MethodContext, engine: PatchingEngine):
        self.metric = ctx.metric
        self.prepared: list[_Prepared] = []
        mean = ctx.source_means(engine)
        full = empty = 0.0
        with torch.no_grad():
            for b in iter_batches(ctx.task, ctx.batch_size, ctx.model.device):
                ablated = engine.ablated_sources(ctx.ablation, b.corrupted, mean)
                clean = ctx.model.run(b.clean)
                none = engine.run(b.clean, ablated, torch.ones(ctx.graph.n_edges, device=ablated.device))
                if self.metric == "kl":
                    reference = metrics.clean_logprobs_of(clean, b)
                    empty += float(metrics.per_prompt("kl", none, b, reference).double().sum())
                else:
                    reference = metrics.per_prompt(self.metric, clean, b)
                    full += float(reference.double().sum())
                    empty += float(metrics.per_prompt(self.metric, none, b).double().sum())
                self.prepared.append(_Prepared(b, ablated, reference))
        n = len(ctx.task)
        scale = empty / n if self.metric == "kl" else (full - empty) ** 2 / n**2
        self.scale = scale if scale > 1e-12 else 1.0  # a task that does not separate them: unnormalised

    def batch(self, step: int) -> _Prepared:
        """The minibatch of step ``step`` (cycling)."""
        return self.prepared[step % len(self.prepared)]

    def __call__(self, p: _Prepared, logits: torch.Tensor) -> torch.Tensor:
        """The loss on minibatch ``p`` of the circuit's logits ``[B, P, V]``."""
        if self.metric == "kl":
            return metrics.per_prompt("kl", logits, p.batch, p.reference).mean() / self.scale
        gap = metrics.per_prompt(self.metric, logits, p.batch) - p.reference
        return gap.pow(2).mean() / self.scale


def score_edge_pruning(ctx: MethodContext, params: EdgePruningParams) -> MethodResult:
    """Train the masks; scores are the keep probabilities, the circuit the ``target`` edges of
    largest logit (or the ``top_n`` / ``threshold`` selection of the scores, when given)."""
    graph, model = ctx.graph, ctx.model
    n_edges = graph.n_edges
    target = target_edge_count(n_edges, params)
    engine = PatchingEngine(model, graph)
    ctx.report(0.0, "preparing")
    loss_of = FaithfulnessLoss(ctx, engine)
    logits = torch.full((n_edges,), INIT_LOGIT, device=model.device, dtype=torch.float32, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=params.lr)
    lambdas = [0.0, params.lambda_init]  # linear, quadratic
    noise = torch.Generator().manual_seed(params.mask_seed)
    warmup = max(1, math.ceil(WARMUP * params.steps))
    faith = torch.zeros(())
    for step in range(params.steps):
        ctx.check_stop()
        p = loss_of.batch(step)
        with torch.enable_grad():
            masks = sample_masks(logits, params.relaxation, noise)
            out = engine.run(p.batch.clean, p.ablated, 1 - masks)
            faith = loss_of(p, out)
            goal = n_edges - (n_edges - target) * min(1.0, (step + 1) / warmup)
            d = (keep_probability(logits, params.relaxation).sum() - goal) / n_edges
            loss = faith + lambdas[0] * d + lambdas[1] * d * d
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        gap = float(d.detach())
        lambdas[0] += LAMBDA_LR * params.lr * gap
        lambdas[1] += LAMBDA_LR * params.lr * gap * gap
        if (step + 1) % REPORT_EVERY == 0 or step + 1 == params.steps:
            ctx.report((step + 1) / params.steps, f"training masks: step {step + 1}/{params.steps}")
    final = logits.detach()
    scores = keep_probability(final.double(), params.relaxation)
    keep = None
    if params.top_n is None and params.threshold is None:
        keep = torch.zeros(n_edges, dtype=torch.bool, device=final.device)
        keep[torch.sort(final, descending=True, stable=True).indices[:target]] = True
    info = {
        "target_edges": target,
        "expected_edges": round(float(keep_probability(final, params.relaxation).sum()), 3),
        "masks_above_half": int((deterministic_masks(final, params.relaxation) > 0.5).sum()),
        "final_faithfulness_loss": round(float(faith.detach()), 6),
    }
    return MethodResult(scores.to(model.dtype), info, keep)

