"""The job spec: one contract for the CLI, the API and the workers. Imports no torch.

A spec names a model, a task and a method; the method's options are ``params``, validated by
that method's own parameter model from the registry (:data:`circuitd.methods.METHODS`). For
brevity a method's parameters may also be given at the top level (``{"method": "acdc",
"tau": [0.01]}``); they are moved into ``params``. A generator's options are ``task_params``,
validated by that generator's parameter model (:data:`circuitd.tasks.GENERATORS`). Everything
that can be checked without the model is checked here, bounds included (:mod:`circuitd.limits`),
with messages that name the field: a spec that passes cannot exhaust a worker. What needs the
tokenizer is checked when the task is resolved.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, LiteralString, cast

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
from pydantic_core import InitErrorDetails, PydanticCustomError

from circuitd.access import check_model_id
from circuitd.errors import ModelError
from circuitd.limits import MAX_SEED, at_most
from circuitd.methods import METHODS, param_owners
from circuitd.methods.contract import MethodParams
from circuitd.names import DTypeName
from circuitd.tasks import GENERATORS
from circuitd.tasks.base import TaskData

DEFAULT_METHOD = "eap-ig"
DEVICE = re.compile(r"cpu|mps|cuda(:[0-9]{1,3})?")  # what torch.device takes that a worker can have

Params = Annotated[
    SerializeAsAny[MethodParams],
    WithJsonSchema({
        "type": "object",
        "description": "the method's parameters (see GET /v1/methods for each method's schema)",
    }),
]


def spec_error_line(exc: ValidationError) -> str:
    """The first problem of an invalid spec as one line ``field: reason``. A spec-wide check
    already names its field in its message, so it gets no ``spec:`` prefix on top; a parameter
    model's check that names a parameter is moved onto it (``params.tau: ...``), as the API does."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = " ".join(str(err["msg"]).removeprefix("Value error, ").split())
    if not loc:
        return msg if named_field(msg) else f"spec: {msg}"
    named = named_field(msg) if loc == "params" else None
    return f"params.{named[0]}: {named[1]}" if named else f"{loc}: {msg}"


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


def _located(exc: ValidationError, field: str) -> ValidationError:
    """A parameter model's errors located under ``field`` (``params``, ``task_params``), each
    message kept as it was written (a limit's message names its setting)."""
    errors: list[InitErrorDetails] = []
    for e in exc.errors():
        # Already formatted, and with no context nothing is substituted into it again.
        kept = PydanticCustomError(cast("LiteralString", e["type"]), cast("LiteralString", e["msg"]))
        errors.append(InitErrorDetails(type=kept, loc=(field, *e["loc"]), input=e["input"]))
    return ValidationError.from_exception_data(JobSpec.__name__, errors)


def _typed_task(data: dict[str, Any]) -> None:
    """Validate an inline task as a TaskData (its errors under ``task``, not under each member of
    the field's union), and ``task_params`` with the chosen generator's parameter model, in place:
    unknown names, wrong types and values past their bounds are refused before any job exists."""
    task = data.get("task")
    if isinstance(task, dict):
        try:
            data["task"] = task = TaskData.model_validate(task)
        except ValidationError as exc:
            raise _located(exc, "task") from None
    given: Any = data.get("task_params")
    if given is None:
        return
    if not isinstance(given, dict):
        raise ValueError("task_params: expected an object of the generator's parameters")
    if given and not isinstance(task, str):
        where = "without a task" if task is None else "with an inline task"
        raise ValueError(f"task_params: only for a generator task (ioi, random, ...), not {where}")
    if not isinstance(task, str) or task not in GENERATORS:
        return  # the task's own check names it
    try:
        typed = GENERATORS[task].params.model_validate(given)
    except ValidationError as exc:
        raise _located(exc, "task_params") from None
    data["task_params"] = typed.model_dump(mode="json", exclude_unset=True)


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    task: str | TaskData | None = Field(
        default=None, description="a generator name or an inline task (attribution-graph: or give prompt)"
    )
    task_params: dict[str, Any] = Field(
        default_factory=dict,
        description="the generator's parameters (see GET /v1/tasks for each generator's schema)",
    )
    n_prompts: Annotated[int | None, at_most("max_prompts")] = Field(
        default=None, ge=1, description="prompts of the task (at most CIRCUITD_MAX_PROMPTS)"
    )
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    method: str = Field(default=DEFAULT_METHOD, json_schema_extra={"enum": list(METHODS)})
    params: Params = Field(default_factory=MethodParams)
    batch_size: Annotated[int, at_most("max_batch_size")] = Field(
        default=32, ge=1, description="prompts per forward pass (at most CIRCUITD_MAX_BATCH_SIZE)"
    )
    device: str = Field(default="cpu", max_length=16, json_schema_extra={"pattern": f"^({DEVICE.pattern})$"})
    dtype: DTypeName = "float32"

    @model_validator(mode="wrap")
    @classmethod
    def _typed_params(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> JobSpec:
        """Validate ``params`` with the chosen method's parameter model (moving top-level
        parameters into it), then the task and ``task_params``, before the rest of the spec."""
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
            raise _located(exc, "params") from None
        _typed_task(data)
        return handler(data)

    @field_validator("model")
    @classmethod
    def _model_id(cls, v: str) -> str:
        """A model id the caller may use (:func:`circuitd.access.check_model_id`: the trust boundary)."""
        try:
            check_model_id(v)
        except ModelError as exc:
            raise ValueError(str(exc)) from exc
        return v

    @field_validator("task")
    @classmethod
    def _task(cls, v: str | TaskData | None) -> str | TaskData | None:
        if isinstance(v, str) and v not in GENERATORS:
            raise ValueError(f"unknown generator '{v}' (choose from {', '.join(GENERATORS)})")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE.fullmatch(v):
            raise ValueError(f"{v!r} is not cpu, mps, cuda or cuda:N")
        return v

    @model_validator(mode="after")
    def _method_checks(self) -> JobSpec:
        self.params.check_spec(self)
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
