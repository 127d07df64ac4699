"""Faithfulness of circuits, the faithfulness curve, CPR and CMD.

An :class:`Evaluator` prepares a task once (ablated source values and clean
log-probabilities per minibatch) and then scores any number of circuits, several per
forward pass on the engine's circuit axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypedDict

import torch

from circuitd import metrics
from circuitd.batch import TaskBatch, iter_batches
from circuitd.edge_context import MethodContext
from circuitd.edges import EdgeGraph
from circuitd.patching import PatchingEngine
from circuitd.selection import prune_dangling, top_n

# MIB's edge fractions, in percent
CURVE_PERCENTS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)


class Curve(TypedDict):
    """The faithfulness curve: per edge percentage its edge count and faithfulness, with CPR and CMD."""

    percents: list[float]
    n_edges: list[int]
    faithfulness: list[float]
    cpr: float
    cmd: float


@dataclass
class _Prepared:
    batch: TaskBatch
    ablated: torch.Tensor
    clean_logprobs: torch.Tensor | None


class Evaluator:
    """Metric values of circuits (bool masks over edges) on a whole task."""

    def __init__(self, ctx: MethodContext, max_elements: int = 2**27):
        self.ctx = ctx
        self.graph: EdgeGraph = ctx.graph
        self.engine = PatchingEngine(ctx.model, ctx.graph)
        self.max_elements = max_elements
        mean = ctx.source_means(self.engine)
        self.prepared: list[_Prepared] = []
        with torch.no_grad():
            for b in iter_batches(ctx.task, ctx.batch_size, ctx.model.device):
                ablated = self.engine.ablated_sources(ctx.ablation, b.corrupted, mean)
                lp = None
                if ctx.metric == "kl":
                    lp = metrics.clean_logprobs_of(ctx.model.run(b.clean), b)
                self.prepared.append(_Prepared(b, ablated, lp))
        self._full: float | None = None
        self._empty: float | None = None

    def metric_of(self, keep: torch.Tensor) -> torch.Tensor:
        """Task metric ``[C]`` of circuits ``keep [C, n_edges]`` (True = edge kept)."""
        keep = keep.to(self.ctx.model.device)
        single = keep.ndim == 1
        keep = keep.unsqueeze(0) if single else keep
        alpha = (~keep).to(self.ctx.model.dtype)
        total = torch.zeros(keep.shape[0], dtype=torch.float64, device=keep.device)
        with torch.no_grad():
            for p in self.prepared:
                per_circuit = max(1, self.max_elements // max(1, p.ablated.numel()))
                vals = []
                for chunk in alpha.split(per_circuit):
                    logits = self.engine.run(p.batch.clean, p.ablated, chunk)
                    vals.append(metrics.per_prompt(self.ctx.metric, logits, p.batch, p.clean_logprobs))
                total += torch.cat(vals).double().sum(-1)
        out = (total / len(self.ctx.task)).float()
        return out[0] if single else out

    @property
    def metric_full(self) -> float:
        if self._full is None:
            self._full = float(self.metric_of(torch.ones(self.graph.n_edges, dtype=torch.bool)))
        return self._full

    @property
    def metric_empty(self) -> float:
        if self._empty is None:
            self._empty = float(self.metric_of(torch.zeros(self.graph.n_edges, dtype=torch.bool)))
        return self._empty

    def summary(self, keep: torch.Tensor) -> dict[str, float | int]:
        m = float(self.metric_of(keep))
        return {
            "faithfulness": metrics.faithfulness(m, self.metric_full, self.metric_empty),
            "metric_full": self.metric_full,
            "metric_empty": self.metric_empty,
            "metric_circuit": m,
            "n_edges": int(keep.sum()),
            "n_edges_total": self.graph.n_edges,
        }

    def faithfulness_of(self, keep: torch.Tensor) -> list[float]:
        """Faithfulness of circuits ``keep [C, n_edges]``, one per circuit."""
        values = self.metric_of(keep).tolist()
        return [metrics.faithfulness(v, self.metric_full, self.metric_empty) for v in values]

    def curve(
        self, scores: torch.Tensor, percents: tuple[float, ...] = CURVE_PERCENTS, prune: bool = False
    ) -> Curve:
        """Faithfulness of the top-k edges by |score| at each edge percentage, with CPR (area
        under f) and CMD (area under |1 - f|) over the edge fraction, trapezoids."""
        ks = [max(1, math.ceil(p / 100 * self.graph.n_edges)) for p in percents]
        masks = torch.stack([top_n(scores, k) for k in ks])
        if prune:
            masks = torch.stack([prune_dangling(self.graph, m) for m in masks])
        f = self.faithfulness_of(masks)
        area = areas(percents, f)
        return {
            "percents": list(percents),
            "n_edges": ks,
            "faithfulness": f,
            "cpr": area["cpr"],
            "cmd": area["cmd"],
        }


def areas(percents: tuple[float, ...] | list[float], f: list[float]) -> dict[str, float]:
    """CPR (area under the faithfulness curve) and CMD (area under |1 - f|) over the fraction
    ``percents / 100`` of the edges or nodes kept, trapezoids."""
    x = [p / 100 for p in percents]
    return {"cpr": trapezoid(x, f), "cmd": trapezoid(x, [abs(1 - v) for v in f])}


def trapezoid(x: list[float], y: list[float]) -> float:
    return sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1))
