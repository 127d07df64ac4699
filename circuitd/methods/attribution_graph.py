"""The ``attribution-graph`` method: one prompt, a transcoder set, the pruned attribution graph.

Unlike the edge methods it explains a single prompt, so it takes ``prompt`` (or a task, whose
first clean prompt, cut at its answer position, is used) instead of a dataset, and returns an
attribution graph (node kinds feature, error, token, logit) rather than an edge circuit. The
work is done by :func:`circuitd.attribution.explain.explain`; this module holds the parameters
and the registry entry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, Field, field_validator, model_validator

from circuitd.access import check_transcoders
from circuitd.errors import CircuitdError
from circuitd.limits import MAX_NODE_ID_CHARS, MAX_SCALE, MAX_VALIDATE_NODES, at_most, entries_at_most
from circuitd.methods.contract import Method, MethodParams
from circuitd.names import AttributionConvention
from circuitd.tasks.base import check_prompt, check_token

if TYPE_CHECKING:
    from circuitd.spec import JobSpec


def _duplicate(values: list[str | int] | list[str]) -> int | None:
    """The index of the first value that repeats an earlier one (a set: linear in the values)."""
    seen: set[str | int] = set()
    for i, v in enumerate(values):
        if v in seen:
            return i
        seen.add(v)
    return None


Token = Annotated[str | int, AfterValidator(check_token)]  # a token as text or id, bounded
NodeId = Annotated[str, Field(min_length=1, max_length=MAX_NODE_ID_CHARS)]


class AttributionGraphParams(MethodParams):
    """Which prompt and logits to explain, through which transcoders, and how to prune."""

    prompt: str | list[int] | None = Field(
        default=None, description="the prompt: text or token ids (or give a task: its first prompt)"
    )
    transcoders: str | None = Field(
        default=None, description="a transcoder directory or hub id (default: the zoo model's)"
    )
    node_threshold: float = Field(
        default=0.8, ge=0, le=1, allow_inf_nan=False, description="node share of influence kept"
    )
    edge_threshold: float = Field(
        default=0.98, ge=0, le=1, allow_inf_nan=False, description="edge share of influence kept"
    )
    max_feature_nodes: Annotated[int | None, at_most("max_feature_nodes")] = Field(
        default=None, ge=1, description="attribute at most N features, by estimated influence"
    )
    desired_logit_prob: float = Field(
        default=0.95, gt=0, le=1, allow_inf_nan=False,
        description="explain the top logits up to this cumulative probability",
    )
    max_n_logits: Annotated[int, at_most("max_logit_targets")] = Field(
        default=10, ge=1, description="explain at most N top logits"
    )
    target_tokens: Annotated[list[Token] | None, entries_at_most("max_logit_targets")] = Field(
        default=None, min_length=1, description="explain these tokens' logits",
        json_schema_extra={"cli_flag": "--target-token"},
    )
    logit_diff: list[Token] | None = Field(
        default=None, min_length=2, max_length=2, description="[correct, incorrect]: explain their difference"
    )
    validate_nodes: list[NodeId] | None = Field(
        default=None, min_length=1, max_length=MAX_VALIDATE_NODES,
        description="node ids to scale after attributing (checks the graph)",
        json_schema_extra={"cli_flag": "--validate-node"},
    )
    validate_scale: float = Field(
        default=0.0, ge=-MAX_SCALE, le=MAX_SCALE, allow_inf_nan=False,
        description="the scale for validate_nodes (0 ablates)",
    )
    convention: AttributionConvention = Field(
        default="circuitd",
        description="token and error nodes as circuitd defines them, or as circuit-tracer does "
        "(token embedding without positions, error nodes at position 0)",
    )

    @field_validator("transcoders")
    @classmethod
    def _transcoders_allowed(cls, v: str | None) -> str | None:
        """A source the caller may use (:func:`circuitd.access.check_transcoders`)."""
        try:
            check_transcoders(v)
        except CircuitdError as exc:
            raise ValueError(str(exc)) from exc
        return v

    @field_validator("prompt")
    @classmethod
    def _prompt_bounds(cls, v: str | list[int] | None) -> str | list[int] | None:
        return None if v is None else check_prompt(v)

    @model_validator(mode="after")
    def _targets(self) -> AttributionGraphParams:
        for name in ("target_tokens", "validate_nodes", "logit_diff"):
            j = _duplicate(getattr(self, name) or [])
            if j is not None:
                raise ValueError(f"{name}[{j}]: repeats an earlier entry")
        if (isinstance(self.prompt, str) and not self.prompt.strip()) or self.prompt == []:
            raise ValueError("prompt: empty")
        if self.target_tokens is not None and self.logit_diff is not None:
            raise ValueError("target_tokens and logit_diff: give at most one")
        return self

    def check_spec(self, spec: JobSpec) -> None:
        if (spec.task is None) == (self.prompt is None):
            raise ValueError("prompt: attribution-graph takes a prompt or a task (its first prompt)")
        if spec.n_prompts is not None:
            raise ValueError("n_prompts: only for methods that read a dataset, not attribution-graph")


ATTRIBUTION_GRAPH = Method(
    "attribution-graph", "one prompt explained through transcoders (a local replacement model)",
    AttributionGraphParams, "circuitd.attribution.explain:explain",
)
