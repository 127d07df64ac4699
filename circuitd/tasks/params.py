"""A generator's parameters: one pydantic model per generator, the only description of them.

The job spec validates ``task_params`` with the chosen generator's model (errors at
``task_params.<name>``), the API catalog publishes its JSON schema, and the generator itself
reads its keyword arguments through it, so a parameter cannot be unknown, unbounded or of the
wrong type once a generator runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from circuitd.errors import TaskError
from circuitd.names import MetricName
from circuitd.tasks.base import TaskData


class GeneratorParams(BaseModel):
    """What every generator takes: the metric its task is scored with. Unknown names are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: MetricName = Field(default="logit_diff", description="the task's metric")

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> Self:
        """``values`` validated; the first problem is a TaskError naming the parameter."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "task_params"
            raise TaskError(field, str(err["msg"]).removeprefix("Value error, ")) from None


@dataclass(frozen=True)
class Generator:
    """A registry entry: a generator's parameter model and its function
    ``generate(tokenizer, d_vocab, n=..., seed=..., **params) -> TaskData``."""

    params: type[GeneratorParams]
    generate: Callable[..., TaskData]

    def describe(self) -> dict[str, Any]:
        """The catalog entry: the parameters' JSON schema (what ``task_params`` takes)."""
        return self.params.model_json_schema()
