"""Neuron level for the first-order methods (eap, eap-ig): MLP neurons scored, selected, evaluated.

A neuron ``m{l}.n{i}`` is unit i of MLP l's hidden activation after its nonlinearity
(TransformerLens's ``blocks.{l}.mlp.hook_post``). Its score is the first-order estimate of the
metric change when it is ablated, ``(ablated - clean activation) . d metric / d activation``
summed over positions and averaged over prompts: the sign of the edge scores (``d metric /
d alpha`` with alpha = 1 ablated). EAP-IG averages the gradient over inputs interpolated from
the corrupted to the clean embedding (``ig_steps``), as its edge scores do. The ablated
activation is the corrupted prompt's (``resample``), zero, or its mean over the corrupted
prompts' real positions (``mean``).

A neuron circuit keeps its neurons' clean activations and gives every other MLP neuron its
ablated value; attention is left as it is. Its faithfulness compares it with every neuron kept
(the model) and none kept (every MLP neuron ablated); the curve is over neuron percentages.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from circuitd import metrics
from circuitd.batch import TaskBatch, iter_batches
from circuitd.edge_context import MethodContext
from circuitd.errors import CircuitdError
from circuitd.evaluate import CURVE_PERCENTS, trapezoid
from circuitd.models.adapter import HookFn
from circuitd.selection import above_threshold, top_n


def hook_post(layer: int) -> str:
    """Where MLP ``layer``'s neurons are read and ablated ``[batch, pos, d_mlp]``."""
    return f"blocks.{layer}.mlp.hook_post"


def neuron_names(n_layers: int, d_mlp: int) -> list[str]:
    """``m{l}.n{i}`` in layer-major order: the flat index of every neuron tensor here."""
    return [f"m{layer}.n{i}" for layer in range(n_layers) for i in range(d_mlp)]


def check_neurons(ctx: MethodContext) -> None:
    """A model without MLPs has no neurons to score."""
    if ctx.model.shape.attn_only or not ctx.model.shape.d_mlp:
        raise CircuitdError(f"level: neuron needs MLPs; {ctx.model.model_id} is attention-only")


def _capture(store: list[torch.Tensor]) -> HookFn:
    def keep(act: torch.Tensor) -> None:
        store.append(act.detach())

    return keep


def activations(ctx: MethodContext, tokens: torch.Tensor) -> torch.Tensor:
    """Every MLP neuron's activation ``[L, B, P, d_mlp]`` on an unpatched pass."""
    seen: list[torch.Tensor] = []
    hooks = [(hook_post(layer), _capture(seen)) for layer in range(ctx.model.shape.n_layers)]
    with torch.no_grad(), ctx.model.shared_head_inputs():
        ctx.model.run(tokens, hooks, logits=False)
    return torch.stack(seen)


def mean_activations(ctx: MethodContext) -> torch.Tensor:
    """Mean activation ``[L, d_mlp]`` of every neuron over the corrupted prompts' real positions."""
    total, count = None, 0
    for b in iter_batches(ctx.task, ctx.batch_size, ctx.model.device):
        mask = b.token_mask.to(ctx.model.dtype)[None, :, :, None]
        s = (activations(ctx, b.corrupted) * mask).sum((1, 2))
        total = s if total is None else total + s
        count += int(b.token_mask.sum())
    assert total is not None
    return total / count


def ablated_activations(ctx: MethodContext, batch: TaskBatch, mean: torch.Tensor | None) -> torch.Tensor:
    """What an ablated neuron carries on this batch ``[L, B, P, d_mlp]``."""
    if ctx.ablation == "resample":
        return activations(ctx, batch.corrupted)
    shape = (ctx.model.shape.n_layers, *batch.clean.shape, ctx.model.shape.d_mlp)
    if ctx.ablation == "zero":
        return torch.zeros(shape, device=ctx.model.device, dtype=ctx.model.dtype)
    assert mean is not None  # mean ablation: from mean_activations
    return mean[:, None, None, :].expand(shape)


def _gradients(
    ctx: MethodContext, batch: TaskBatch, metric_fn: Callable[[torch.Tensor], torch.Tensor],
    t: float, baseline: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(activations, d metric / d activation), each ``[L, B, P, d_mlp]``, with the input at
    ``baseline + t (clean - baseline)``. A zero probe is added at each hook so that the
    gradient is the total derivative, through every later neuron too."""
    n_layers, d_mlp = ctx.model.shape.n_layers, ctx.model.shape.d_mlp
    shape = (n_layers, *batch.clean.shape, d_mlp)
    probes = torch.zeros(shape, device=ctx.model.device, dtype=ctx.model.dtype, requires_grad=True)
    seen: list[torch.Tensor] = []

    def probe(layer: int) -> HookFn:
        def add(act: torch.Tensor) -> torch.Tensor:
            seen.append(act.detach())
            return act + probes[layer]

        return add

    hooks: list[tuple[str, HookFn]] = [(hook_post(layer), probe(layer)) for layer in range(n_layers)]
    if baseline is not None and t < 1:
        hooks.insert(0, (ctx.model.hook_input(), lambda a: baseline + t * (a - baseline)))
    with torch.enable_grad(), ctx.model.shared_head_inputs():
        (grad,) = torch.autograd.grad(metric_fn(ctx.model.run(batch.clean, hooks)), probes)
    return torch.stack(seen), grad


def neuron_scores(ctx: MethodContext, steps: int = 1) -> torch.Tensor:
    """Every neuron's score ``[L, d_mlp]`` (float64), mean over prompts (module docstring);
    ``steps > 1``: EAP-IG's gradients averaged over interpolated inputs."""
    check_neurons(ctx)
    mean = mean_activations(ctx) if ctx.ablation == "mean" else None
    total = torch.zeros(ctx.model.shape.n_layers, ctx.model.shape.d_mlp, dtype=torch.float64)
    batches = list(iter_batches(ctx.task, ctx.batch_size, ctx.model.device))
    for i, b in enumerate(batches):
        ctx.check_stop()
        ablated = ablated_activations(ctx, b, mean)
        metric_fn = ctx.metric_fn(b)
        baseline = ctx.model.input_source(b.corrupted) if steps > 1 else None
        clean, grad_sum = _gradients(ctx, b, metric_fn, 1.0, baseline)  # t = 1 first: the clean activations
        for k in range(1, steps):
            grad_sum += _gradients(ctx, b, metric_fn, k / steps, baseline)[1]
        per_neuron = ((ablated - clean) * grad_sum).sum((1, 2)) / steps  # metric_fn is a batch mean
        total += per_neuron.double().cpu() * len(b)
        ctx.report((i + 1) / len(batches), "scoring neurons")
    return total / len(ctx.task)


@dataclass
class _Prepared:
    batch: TaskBatch
    ablated: torch.Tensor
    clean_logprobs: torch.Tensor | None


class NeuronEvaluator:
    """Task metric of neuron circuits (bool masks ``[L, d_mlp]``): kept neurons clean, the rest
    ablated, one pass per circuit and minibatch."""

    def __init__(self, ctx: MethodContext):
        check_neurons(ctx)
        self.ctx = ctx
        mean = mean_activations(ctx) if ctx.ablation == "mean" else None
        self.prepared: list[_Prepared] = []
        with torch.no_grad():
            for b in iter_batches(ctx.task, ctx.batch_size, ctx.model.device):
                lp = metrics.clean_logprobs_of(ctx.model.run(b.clean), b) if ctx.metric == "kl" else None
                self.prepared.append(_Prepared(b, ablated_activations(ctx, b, mean), lp))
        shape = (ctx.model.shape.n_layers, ctx.model.shape.d_mlp)
        self.metric_full = float(self.metric_of(torch.ones(shape, dtype=torch.bool))[0])
        self.metric_empty = float(self.metric_of(torch.zeros(shape, dtype=torch.bool))[0])

    def metric_of(self, keep: torch.Tensor) -> torch.Tensor:
        """Task metric ``[C]`` of circuits ``keep [C, L, d_mlp]`` (or one ``[L, d_mlp]``)."""
        keep = keep.reshape(-1, *keep.shape[-2:]).to(self.ctx.model.device)
        total = torch.zeros(keep.shape[0], dtype=torch.float64)
        for p in self.prepared:
            for c, circuit in enumerate(keep):
                def patch(layer: int, circuit: torch.Tensor = circuit, p: _Prepared = p) -> HookFn:
                    return lambda act: torch.where(circuit[layer], act, p.ablated[layer])

                hooks = [(hook_post(layer), patch(layer)) for layer in range(keep.shape[1])]
                with torch.no_grad(), self.ctx.model.shared_head_inputs():
                    logits = self.ctx.model.run(p.batch.clean, hooks)
                values = metrics.per_prompt(self.ctx.metric, logits, p.batch, p.clean_logprobs)
                total[c] += float(values.double().sum())
        return (total / len(self.ctx.task)).float()

    def faithfulness(self, values: list[float]) -> list[float]:
        return [metrics.faithfulness(v, self.metric_full, self.metric_empty) for v in values]

    def summary(self, keep: torch.Tensor) -> dict[str, float | int]:
        m = float(self.metric_of(keep)[0])
        return {
            "faithfulness": self.faithfulness([m])[0],
            "metric_full": self.metric_full,
            "metric_empty": self.metric_empty,
            "metric_circuit": m,
            "n_neurons": int(keep.sum()),
            "n_neurons_total": keep.numel(),
        }

    def curve(self, scores: torch.Tensor, percents: tuple[float, ...] = CURVE_PERCENTS) -> dict[str, Any]:
        """Faithfulness of the top-k neurons by |score| at each neuron percentage, with CPR and
        CMD over the neuron fraction (trapezoids), as ``Evaluator.curve`` over edges."""
        ks = [max(1, math.ceil(p / 100 * scores.numel())) for p in percents]
        masks = torch.stack([top_n(scores.flatten(), k).view(scores.shape) for k in ks])
        f = self.faithfulness(self.metric_of(masks).tolist())
        x = [p / 100 for p in percents]
        return {
            "percents": list(percents), "n_neurons": ks, "faithfulness": f,
            "cpr": trapezoid(x, f), "cmd": trapezoid(x, [abs(1 - v) for v in f]),
        }


def select_neurons(
    scores: torch.Tensor, n: int | None = None, threshold: float | None = None
) -> torch.Tensor:
    """The neuron circuit ``[L, d_mlp]``: the ``n`` neurons of largest |score|, or those with
    |score| >= ``threshold`` (exactly one of the two)."""
    if (n is None) == (threshold is None):
        raise ValueError("give exactly one of top_n and threshold")
    flat = scores.flatten()
    chosen = top_n(flat, n) if n is not None else above_threshold(flat, float(threshold or 0.0))
    return chosen.view(scores.shape)
