"""The method contract: what a method declares, what it is given and what it returns.

A :class:`Method` is a name, a typed parameter model and ``run(ctx, params) -> Result``. The
parameter model is the one definition of the method's options: the job spec validates them,
the CLI derives its flags from it, the API catalog publishes its JSON schema and ``run``
receives an instance of it. Imports no torch, so the API can read every method's parameters
without loading the engine; methods import what they compute with inside ``run``.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from circuitd.edges import KVHeads
from circuitd.limits import at_most, env_name, setting_limit
from circuitd.names import AblationName, MetricName
from circuitd.progress import Progress, Reports, ShouldStop

if TYPE_CHECKING:
    import networkx as nx
    import torch

    from circuitd.spec import JobSpec

DEFAULT_TOP_FRACTION = 0.05  # edge methods without top_n or threshold keep this share of the edges
Level = Literal["edge", "node", "neuron"]
# How a method scores nodes at level node (circuitd.methods.node_level): "sum" of its out-edges' scores
# (first-order, additive scores: exact for the linearised metric), "exact" metric change of
# ablating the node alone, or ACDC's "greedy" pass over nodes; None: edge level only.
NodeScoring = Literal["sum", "exact", "greedy"]


class MethodParams(BaseModel):
    """Base of every method's parameters: unknown names are errors, not silently ignored. Every
    number is bounded and finite, every list capped (:mod:`circuitd.limits`): a spec that passes
    cannot exhaust a worker."""

    model_config = ConfigDict(extra="forbid")

    def check_spec(self, spec: JobSpec) -> None:
        """Checks that need the rest of the spec (its task, n_prompts); raise ValueError naming the field."""


class EdgeParams(MethodParams):
    """What every edge method shares: the faithfulness metric, the ablation, the edge graph's
    shape, how the circuit is selected from the scores, and whether to draw the curve."""

    metric: MetricName | None = Field(default=None, description="overrides the task's metric")
    ablation: AblationName = Field(default="resample", description="what an ablated edge carries")
    top_n: Annotated[int | None, at_most("max_edges")] = Field(
        default=None, ge=1, description="keep the N edges of largest |score| (default 5%)"
    )
    threshold: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="keep edges with |score| >= X"
    )
    split_qkv: bool = Field(default=True, description="one edge per q, k and v input of each head")
    kv_heads: KVHeads = Field(
        default="grouped",
        description="grouped-query models: k/v edges per key/value head (grouped) or per query head "
        "(per-query, as TransformerLens's ungrouped attention and EAP-IG); needs split_qkv",
    )
    curve: bool = Field(default=True, description="compute the faithfulness curve, CPR and CMD")
    level: Level = Field(
        default="edge",
        description="edge: score and select edges; node: heads and MLPs, each ablated as a whole; "
        "neuron: MLP neurons (top_n and threshold count nodes or neurons)",
    )
    refine_rounds: Annotated[int, at_most("max_refine_rounds")] = Field(
        default=0, ge=0,
        description="after selection, up to N rounds of one-for-one edge swaps, each measured exactly, "
        "that raise the circuit's faithfulness at the same size; edge level",
    )
    prune_to: Annotated[int | None, at_most("max_edges")] = Field(
        default=None, ge=1,
        description="after selection, remove edges one at a time, each the least harmful of the best "
        "estimated removals measured exactly, until N remain (before refine_rounds); edge level",
    )
    positions: bool = Field(
        default=False,
        description="split every edge by token position (position-aware edges; the prompts must share "
        "one length, as a template's do); edge level",
    )
    node_scoring: ClassVar[NodeScoring | None] = None  # set by the methods that have a node level
    neuron_level: ClassVar[bool] = False  # set by the first-order methods (circuitd.methods.neuron_level)
    position_aware: ClassVar[bool] = False  # set by the methods whose scores split by position

    @model_validator(mode="after")
    def _one_selection(self) -> EdgeParams:
        if self.top_n is not None and self.threshold is not None:
            raise ValueError("top_n and threshold: give at most one")
        return self

    @model_validator(mode="after")
    def _level_supported(self) -> EdgeParams:
        levels = ["edge"] + ["node"] * (self.node_scoring is not None) + ["neuron"] * self.neuron_level
        if self.level not in levels:
            offered = ", ".join(levels)
            raise ValueError(f"level: '{self.level}' is not available for this method (only {offered})")
        return self

    @model_validator(mode="after")
    def _edge_level_options(self) -> EdgeParams:
        if self.positions and not self.position_aware:
            raise ValueError("positions: this method does not split edges by position")
        if self.refine_rounds and self.level != "edge":
            raise ValueError(f"refine_rounds: swaps refine edge-level circuits (level is '{self.level}')")
        if self.prune_to is not None and self.level != "edge":
            raise ValueError(
                f"prune_to: pruning removes edges from edge-level circuits (level is '{self.level}')"
            )
        if self.prune_to is not None and self.top_n is not None:
            if self.prune_to >= self.top_n:
                raise ValueError(f"prune_to: {self.prune_to} is not below top_n ({self.top_n})")
            limit = setting_limit("max_prune_steps")
            if self.top_n - self.prune_to > limit:
                raise ValueError(
                    f"prune_to: pruning top_n {self.top_n} to {self.prune_to} may remove "
                    f"{self.top_n - self.prune_to} edges, more than {env_name('max_prune_steps')}={limit}"
                )
        if self.positions and self.level != "edge":
            raise ValueError(f"positions: position-aware edges are edge level only (level is '{self.level}')")
        return self

    def check_spec(self, spec: JobSpec) -> None:
        if spec.task is None:
            raise ValueError("task: required (a generator name or an inline task)")


class IGSteps(BaseModel):
    """Integrated-gradient steps, bounded by ``CIRCUITD_MAX_IG_STEPS``."""

    ig_steps: Annotated[int, at_most("max_ig_steps")] = Field(
        default=5, ge=1, description="interpolation steps of EAP-IG"
    )


def finite_list(name: str, values: list[float]) -> list[float]:
    bad = [t for t in values if not (t >= 0 and math.isfinite(t))]
    if bad:
        raise ValueError(f"every {name} must be finite and >= 0 (got {bad[0]})")
    return values


@dataclass
class Result:
    """What every method returns: an edge circuit (MultiDiGraph) or an attribution graph (DiGraph)."""

    graph: nx.MultiDiGraph | nx.DiGraph  # the circuit only (kept edges / pruned graph)
    full_graph: nx.MultiDiGraph | nx.DiGraph  # every scored edge or node, marked in_circuit or not
    metrics: dict[str, Any]
    scores: torch.Tensor | None = None  # edge methods: one score per edge
    keep: torch.Tensor | None = None


@dataclass
class RunContext(Reports):
    """A job as a method sees it: the spec, and the caller's progress and stop callbacks."""

    spec: JobSpec
    progress: Progress | None = None
    should_stop: ShouldStop | None = None


def load_entry(entry: str) -> Any:
    """The object an import string ``package.module:name`` names (imported on first use)."""
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Method:
    """A registry entry: ``entry`` names ``run(ctx, params) -> Result`` by import string, so
    the registry (and the API that reads it) never imports the engine."""

    name: str
    summary: str
    params: type[MethodParams]
    entry: str

    def run(self, ctx: RunContext, params: MethodParams) -> Result:
        """Run the method; ``params`` is an instance of ``self.params``."""
        return load_entry(self.entry)(ctx, params)

    def describe(self) -> dict[str, Any]:
        """The catalog entry: the name, what it does and its parameters' JSON schema."""
        return {"name": self.name, "summary": self.summary, "params": self.params.model_json_schema()}


@dataclass(frozen=True)
class EdgeMethod(Method):
    """An edge method: ``entry`` names its ``score(ctx, params) -> MethodResult``; the model,
    task, selection, evaluation and graph are the shared edge workflow's."""

    def run(self, ctx: RunContext, params: MethodParams) -> Result:
        workflow = load_entry("circuitd.methods.edge_run:run_edge_method")
        return workflow(ctx, params, load_entry(self.entry))
