"""What an edge method and the circuit evaluator receive, and what an edge method returns.

An edge method's ``score(ctx, params) -> MethodResult`` reads the model, edge graph, task,
metric and ablation from the context and its typed parameters from ``params``, reports
progress through the context, and returns one score per edge of the graph (larger
|score| = more important); :mod:`circuitd.methods.edge_run` does the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from circuitd import metrics
from circuitd.batch import TaskBatch, iter_batches
from circuitd.edges import EdgeGraph
from circuitd.models.adapter import ModelAdapter
from circuitd.patching import PatchingEngine
from circuitd.progress import Progress, Reports, ShouldStop
from circuitd.tasks.base import Task


@dataclass
class MethodContext(Reports):
    model: ModelAdapter
    graph: EdgeGraph
    task: Task
    metric: str
    ablation: str = "resample"
    batch_size: int = 32
    progress: Progress | None = None
    should_stop: ShouldStop | None = None

    def metric_fn(self, batch: TaskBatch, at_answers: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
        """The task metric of logits on this batch (KL against the clean model); with
        ``at_answers``, of the logits at the answer positions only ``[..., B, V]``."""
        clean_lp = None
        if self.metric == "kl":
            with torch.no_grad():
                clean_lp = metrics.clean_logprobs_of(self.model.run(batch.clean), batch)

        def fn(logits: torch.Tensor) -> torch.Tensor:
            if at_answers:
                return metrics.per_prompt_at_answers(self.metric, logits, batch, clean_lp).mean(-1)
            return metrics.metric(self.metric, logits, batch, clean_lp)

        return fn

    def source_means(self, engine: PatchingEngine) -> torch.Tensor | None:
        """Dataset means of every source (corrupted prompts), for ``mean`` ablation."""
        if self.ablation != "mean":
            return None
        batches = iter_batches(self.task, self.batch_size, self.model.device)
        return engine.mean_sources([(b.corrupted, b.token_mask) for b in batches])


@dataclass
class MethodResult:
    scores: torch.Tensor  # [n_edges]
    info: dict[str, Any] = field(default_factory=dict)  # JSON-able figures for graph.metrics
    keep: torch.Tensor | None = None  # the method's own circuit (ACDC); else top-n/threshold
