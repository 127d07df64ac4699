"""Edge Pruning (Bhaskar et al. 2024): a continuous mask per edge, trained on the patching
engine to keep the task's metric while a target-sparsity penalty drives masks to zero. Its
parameters and registry entry; the training is in :mod:`circuitd.methods.edge_pruning_scores`.
Imports no torch."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from circuitd.limits import MAX_SEED, at_most
from circuitd.methods.contract import EdgeMethod, EdgeParams


class EdgePruningParams(EdgeParams):
    """The circuit's size (an edge count or a sparsity; default at most 5% of the edges, at least 16), the
    optimisation (steps, learning rate, the Lagrangian multipliers' start), the relaxation of
    the binary masks and the seed of the mask noise. ``top_n`` or ``threshold``, when given,
    select from the trained masks' scores instead of the target."""

    target_edges: Annotated[int | None, at_most("max_edges")] = Field(
        default=None, ge=1,
        description="edges the circuit keeps (default at most 5% of the edges, at least 16)",
    )
    target_sparsity: float | None = Field(
        default=None, gt=0, lt=1, allow_inf_nan=False, description="fraction of the edges removed"
    )
    steps: Annotated[int, at_most("max_mask_steps")] = Field(
        default=300, ge=1, description="optimisation steps (one minibatch each)"
    )
    lr: float = Field(
        default=0.3, gt=0, le=10, allow_inf_nan=False, description="Adam learning rate of the mask logits"
    )
    lambda_init: float = Field(
        default=1000.0, ge=0, le=1e6, allow_inf_nan=False,
        description="start of the quadratic Lagrange multiplier of the sparsity (the linear one: 0)",
    )
    relaxation: Literal["hard-concrete", "sigmoid"] = Field(
        default="hard-concrete",
        description="hard-concrete: stretched, clipped noisy masks, L0 penalty; sigmoid: deterministic masks",
    )
    mask_seed: int = Field(default=0, ge=0, le=MAX_SEED, description="seed of the hard-concrete noise")
    position_aware: ClassVar[bool] = True  # a mask per edge and position

    @model_validator(mode="after")
    def _one_target(self) -> EdgePruningParams:
        if self.target_edges is not None and self.target_sparsity is not None:
            raise ValueError("target_edges and target_sparsity: give at most one")
        return self


EDGE_PRUNING = EdgeMethod(
    "edge-pruning", "per-edge masks trained to keep the metric under a target sparsity", EdgePruningParams,
    "circuitd.methods.edge_pruning_scores:score_edge_pruning",
)
