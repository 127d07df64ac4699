"""The job spec: one contract for the CLI, the API and the workers. Imports no torch.

Everything that can be checked without the model is checked here, with messages that
name the field; what needs the tokenizer is checked when the task is resolved.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from circuitd.errors import ModelError
from circuitd.models.registry import parse_model_id
from circuitd.settings import get_settings
from circuitd.tasks import GENERATORS
from circuitd.tasks.base import METRICS, TaskData

DEFAULT_TOP_FRACTION = 0.05
# Fields one family of methods reads and the other does not: setting one for the wrong method
# is an error rather than a silent no-op.
ATTRIBUTION_FIELDS = (
    "prompt", "transcoders", "node_threshold", "edge_threshold", "max_feature_nodes", "desired_logit_prob",
    "max_n_logits", "target_tokens", "logit_diff", "validate_nodes", "validate_scale",
)
EDGE_FIELDS = (
    "n_prompts", "metric", "top_n", "threshold", "ig_steps", "tau", "abs_diff", "acdc_metric",
    "prefilter_top_n", "prefilter_threshold", "prefilter_method", "ablation", "split_qkv", "curve",
)


def spec_error_line(exc: ValidationError) -> str:
    """The first problem of an invalid spec as one line ``field: reason``. A spec-wide check
    already names its field in its message, so it gets no ``spec:`` prefix on top."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = " ".join(str(err["msg"]).removeprefix("Value error, ").split())
    if not loc:
        head, sep, _ = msg.partition(": ")
        return msg if sep and head in JobSpec.model_fields else f"spec: {msg}"
    return f"{loc}: {msg}"


def _duplicate(values: list) -> int | None:
    """The index of the first value that repeats an earlier one."""
    seen: list = []
    for i, v in enumerate(values):
        if v in seen:
            return i
        seen.append(v)
    return None


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    task: str | TaskData | None = Field(
        default=None, description="a generator name or an inline task (attribution-graph: or give prompt)"
    )
    task_params: dict[str, int | float | str | bool] = Field(default_factory=dict)
    n_prompts: int | None = Field(default=None, ge=1)
    seed: int = 0
    metric: str | None = Field(default=None, description="overrides the task's metric")
    method: Literal["eap", "eap-ig", "acdc", "attribution-graph"] = "eap-ig"
    ig_steps: int = Field(default=5, ge=1)
    tau: list[float] = Field(default_factory=lambda: [0.01], min_length=1, description="ACDC thresholds")
    abs_diff: bool = Field(default=False, description="ACDC compares |metric change| with tau")
    acdc_metric: str | None = Field(default=None, description="ACDC's search metric (default kl)")
    prefilter_top_n: int | None = Field(default=None, ge=1)
    prefilter_threshold: float | None = Field(default=None, ge=0)
    prefilter_method: Literal["eap", "eap-ig"] = "eap-ig"
    ablation: Literal["resample", "zero", "mean"] = "resample"
    top_n: int | None = Field(default=None, ge=1)
    threshold: float | None = Field(default=None, ge=0)
    split_qkv: bool = True
    batch_size: int = Field(default=32, ge=1)
    device: str = "cpu"
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32"
    curve: bool = True
    # attribution-graph
    prompt: str | list[int] | None = Field(default=None, description="attribution-graph: the prompt")
    transcoders: str | None = Field(
        default=None, description="attribution-graph: a transcoder directory or hub id (default: the zoo's)"
    )
    node_threshold: float = Field(default=0.8, ge=0, le=1)
    edge_threshold: float = Field(default=0.98, ge=0, le=1)
    max_feature_nodes: int | None = Field(default=None, ge=1)
    desired_logit_prob: float = Field(default=0.95, gt=0, le=1)
    max_n_logits: int = Field(default=10, ge=1)
    target_tokens: list[str | int] | None = Field(default=None, min_length=1, description="logits to explain")
    logit_diff: list[str | int] | None = Field(
        default=None, min_length=2, max_length=2, description="[correct, incorrect]: explain their difference"
    )
    validate_nodes: list[str] | None = Field(
        default=None, min_length=1, description="attribution-graph: node ids to scale after attributing"
    )
    validate_scale: float = Field(
        default=0.0, allow_inf_nan=False, description="the scale for validate_nodes (0 ablates)"
    )

    @field_validator("model")
    @classmethod
    def _model_id(cls, v: str) -> str:
        try:
            parse_model_id(v)
        except ModelError as exc:
            raise ValueError(str(exc)) from exc
        return v

    @field_validator("task")
    @classmethod
    def _task(cls, v: str | TaskData) -> str | TaskData:
        if isinstance(v, str) and v not in GENERATORS:
            raise ValueError(f"unknown generator '{v}' (choose from {', '.join(GENERATORS)})")
        return v

    @field_validator("tau")
    @classmethod
    def _tau(cls, v: list[float]) -> list[float]:
        bad = [t for t in v if not (t >= 0 and math.isfinite(t))]
        if bad:
            raise ValueError(f"every tau must be finite and >= 0 (got {bad[0]})")
        return v

    @field_validator("metric", "acdc_metric")
    @classmethod
    def _metric(cls, v: str | None) -> str | None:
        if v is not None and v not in METRICS:
            raise ValueError(f"'{v}' is not one of {', '.join(METRICS)}")
        return v

    @model_validator(mode="after")
    def _limits(self) -> JobSpec:
        s = get_settings()
        if self.top_n is not None and self.threshold is not None:
            raise ValueError("top_n and threshold: give at most one")
        if self.prefilter_top_n is not None and self.prefilter_threshold is not None:
            raise ValueError("prefilter_top_n and prefilter_threshold: give at most one")
        for name in EDGE_FIELDS if self.method == "attribution-graph" else ATTRIBUTION_FIELDS:
            if getattr(self, name) != type(self).model_fields[name].get_default(call_default_factory=True):
                kind = "attribution-graph" if name in ATTRIBUTION_FIELDS else "the edge methods"
                raise ValueError(f"{name}: only for {kind}, not {self.method}")
        if self.method == "attribution-graph":
            cap = s.max_logit_targets
            if self.max_n_logits > cap:
                raise ValueError(f"max_n_logits: {self.max_n_logits} exceeds the limit of {cap}")
            if self.target_tokens is not None and len(self.target_tokens) > cap:
                raise ValueError(f"target_tokens: {len(self.target_tokens)} tokens exceed the limit of {cap}")
            for name in ("target_tokens", "validate_nodes", "logit_diff"):
                j = _duplicate(getattr(self, name) or [])
                if j is not None:
                    raise ValueError(f"{name}[{j}]: repeats an earlier entry")
            if (self.task is None) == (self.prompt is None):
                raise ValueError("prompt: attribution-graph takes a prompt or a task (its first prompt)")
            if (isinstance(self.prompt, str) and not self.prompt.strip()) or self.prompt == []:
                raise ValueError("prompt: empty")
            if self.target_tokens is not None and self.logit_diff is not None:
                raise ValueError("target_tokens and logit_diff: give at most one")
            if self.max_feature_nodes is not None and self.max_feature_nodes > s.max_feature_nodes:
                raise ValueError(
                    f"max_feature_nodes: {self.max_feature_nodes} exceeds the limit of {s.max_feature_nodes}"
                )
        elif self.task is None:
            raise ValueError("task: required (a generator name or an inline task)")
        n = self.n_prompts or (len(self.task.clean) if isinstance(self.task, TaskData) else 0)
        if n > s.max_prompts:
            raise ValueError(f"n_prompts: {n} prompts exceed the limit of {s.max_prompts}")
        if self.ig_steps > s.max_ig_steps:
            raise ValueError(f"ig_steps: {self.ig_steps} exceeds the limit of {s.max_ig_steps}")
        return self

    @property
    def task_name(self) -> str:
        if self.task is None:
            return "prompt"
        return self.task if isinstance(self.task, str) else self.task.name
