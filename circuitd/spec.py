"""The job spec: one contract for the CLI, the API and the workers. Imports no torch.

A spec names a model, a task and a method; the method's options are ``params``, validated by
that method's own parameter model from the registry (:data:`circuitd.methods.METHODS`). For
brevity a method's parameters may also be given at the top level (``{"method": "acdc",
"tau": [0.01]}``); they are moved into ``params``. Everything that can be checked without the
model is checked here, with messages that name the field; what needs the tokenizer is checked
when the task is resolved.
"""

from __future__ import annotations

from typing import Annotated, Any, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from circuitd.errors import ModelError
from circuitd.methods import METHODS, param_owners
from circuitd.methods.contract import MethodParams
from circuitd.models.ids import parse_model_id
from circuitd.names import DTypeName
from circuitd.settings import get_settings
from circuitd.tasks import GENERATORS
from circuitd.tasks.base import TaskData

DEFAULT_METHOD = "eap-ig"

Params = Annotated[
    SerializeAsAny[MethodParams],
    WithJsonSchema({
        "type": "object",
        "description": "the method's parameters (see GET /v1/methods for each method's schema)",
    }),
]


def spec_error_line(exc: ValidationError) -> str:
    """The first problem of an invalid spec as one line ``field: reason``. A spec-wide check
    already names its field in its message, so it gets no ``spec:`` prefix on top."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = " ".join(str(err["msg"]).removeprefix("Value error, ").split())
    if not loc:
        return msg if named_field(msg) else f"spec: {msg}"
    return f"{loc}: {msg}"


def named_field(message: str) -> tuple[str, str] | None:
    """``(field, reason)`` when a spec-wide message starts with a field's name (a spec field or a
    method parameter, as in ``tau: only for acdc, not eap``); else None."""
    head, sep, rest = message.partition(": ")
    return (head, rest) if sep and head.split("[")[0] in _field_names() else None


def _field_names() -> set[str]:
    """Names a spec-wide message may start with: the spec's fields and every method parameter."""
    names = set(JobSpec.model_fields)
    for method in METHODS.values():
        names.update(method.params.model_fields)
    return names


def _params_errors(exc: ValidationError) -> list[InitErrorDetails]:
    """A parameter model's errors, located under ``params``."""
    return [
        InitErrorDetails(type=e["type"], loc=("params", *e["loc"]), input=e["input"], ctx=e.get("ctx", {}))
        for e in exc.errors()
    ]


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    task: str | TaskData | None = Field(
        default=None, description="a generator name or an inline task (attribution-graph: or give prompt)"
    )
    task_params: dict[str, int | float | str | bool] = Field(default_factory=dict)
    n_prompts: int | None = Field(default=None, ge=1)
    seed: int = 0
    method: str = Field(default=DEFAULT_METHOD, json_schema_extra={"enum": list(METHODS)})
    params: Params = Field(default_factory=MethodParams)
    batch_size: int = Field(default=32, ge=1)
    device: str = "cpu"
    dtype: DTypeName = "float32"

    @model_validator(mode="wrap")
    @classmethod
    def _typed_params(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> JobSpec:
        """Validate ``params`` with the chosen method's parameter model (moving top-level
        parameters into it) before the rest of the spec."""
        if not isinstance(data, dict):
            return handler(data)  # a JobSpec already, or not an object: the spec's own checks say so
        data = {str(k): v for k, v in cast("dict[Any, Any]", data).items()}
        method = data.get("method", DEFAULT_METHOD)
        if not isinstance(method, str) or method not in METHODS:
            raise ValueError(f"method: {method!r} is not one of {', '.join(METHODS)}")
        given: Any = data.get("params") or {}
        if isinstance(given, MethodParams):
            given = given.model_dump(exclude_unset=True)
        if not isinstance(given, dict):
            raise ValueError("params: expected an object of the method's parameters")
        raw = {str(k): v for k, v in cast("dict[Any, Any]", given).items()}
        for name in [k for k in data if k not in cls.model_fields]:
            owners = param_owners(name)
            if not owners:
                continue  # not a parameter of any method: the spec's own check refuses it
            if method not in owners:
                raise ValueError(f"{name}: only for {', '.join(owners)}, not {method}")
            if name in raw:
                raise ValueError(f"{name}: given both at the top level and in params")
            raw[name] = data.pop(name)
        try:
            data["params"] = METHODS[method].params.model_validate(raw)
        except ValidationError as exc:
            raise ValidationError.from_exception_data(cls.__name__, _params_errors(exc)) from None
        return handler(data)

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
    def _task(cls, v: str | TaskData | None) -> str | TaskData | None:
        if isinstance(v, str) and v not in GENERATORS:
            raise ValueError(f"unknown generator '{v}' (choose from {', '.join(GENERATORS)})")
        return v

    @model_validator(mode="after")
    def _limits(self) -> JobSpec:
        self.params.check_spec(self)
        n = self.n_prompts or (len(self.task.clean) if isinstance(self.task, TaskData) else 0)
        limit = get_settings().max_prompts
        if n > limit:
            raise ValueError(f"n_prompts: {n} prompts exceed the limit of {limit}")
        return self

    def replace(self, **values: Any) -> JobSpec:
        """A validated copy with ``values`` changed: spec fields, or the method's parameters."""
        spec = self.model_dump()
        params = spec.pop("params")
        for name, value in values.items():
            (spec if name in type(self).model_fields else params)[name] = value
        return JobSpec.model_validate({**spec, "params": params})

    @property
    def task_name(self) -> str:
        if self.task is None:
            return "prompt"
        return self.task if isinstance(self.task, str) else self.task.name
