"""The FastAPI app: ``uvicorn api.app:app``. Imports no torch: it starts fast and holds no model."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api.routes import catalog, graphs, health, jobs
from api.telemetry import MetricsMiddleware
from circuitd import __version__
from circuitd.spec import named_field


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("body", "task", "clean", 0)`` -> ``task.clean[0]``; the spec itself when no field."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or ("spec" if loc and loc[0] == "body" else "request")


def _field_and_message(err: dict[str, Any]) -> tuple[str, str]:
    """The field at fault and the message; a spec-wide check that names a field is moved onto it."""
    field = _field(err.get("loc", ()))
    msg = " ".join(str(err.get("msg", "invalid")).removeprefix("Value error, ").split())
    named = named_field(msg) if field in ("spec", "params") else None
    if named is not None:  # "params: tau: ..." -> "params.tau: ..."
        head, rest = named
        return (head if field == "spec" else f"params.{head}"), rest
    return field, msg


async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 whose ``detail`` is one line naming the field, with every error listed in ``errors``."""
    errors: list[dict[str, Any]] = []
    for e in exc.errors():
        field, msg = _field_and_message(e)
        errors.append({"field": field, "message": msg, "type": e.get("type")})
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse(status_code=422, content={"detail": detail, "errors": errors})


def create_app() -> FastAPI:
    app = FastAPI(
        title="circuitd", version=__version__,
        description="Automated circuit discovery as a service: submit a JobSpec, poll, fetch the graph.",
    )
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_middleware(MetricsMiddleware)
    for router in (jobs.router, graphs.router, catalog.router):
        app.include_router(router, prefix="/v1")
    app.include_router(health.router)
    return app


app = create_app()


def openapi_text() -> str:
    """The OpenAPI document in the stable text form of the committed snapshot
    (tests/api/openapi.json; ``make openapi`` rewrites it after a deliberate change)."""
    return json.dumps(create_app().openapi(), indent=1, sort_keys=True) + "\n"
