"""Error bodies: ``{"detail": one line, "code": stable word}`` (and ``errors`` for invalid input).

``code`` lets a client branch without parsing ``detail``; ``detail`` never carries a server
path or an exception type: an unexpected failure answers with a request id that the log
line holding the traceback also carries.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.schemas import Problem
from circuitd.spec import named_field

log = logging.getLogger("circuitd.api")

CODES: dict[int, str] = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}


_WHY: dict[int, str] = {
    400: "the body is not JSON text",
    401: "no API key, or an unknown one",
    404: "no such job (another owner's job is not found either)",
    409: "the job is not in a state this request needs",
    413: "the body is over the limit (CIRCUITD_MAX_BODY_BYTES)",
    422: "invalid input: ``detail`` names the field, ``errors`` lists every problem",
    429: "a quota or the request rate was exceeded (see Retry-After)",
    500: "an unexpected failure (the detail holds a request id the log also carries)",
    503: "the broker or the database cannot be reached",
}


def responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a group of routes may answer, all in the Problem shape."""
    return {code: {"model": Problem, "description": _WHY[code]} for code in status_codes}


def code_for(status_code: int) -> str:
    return CODES.get(status_code, "internal" if status_code >= 500 else "invalid")


class ApiError(HTTPException):
    """An HTTP error whose ``code`` is more specific than its status (429: ``quota`` or ``rate_limited``)."""

    def __init__(
        self, status_code: int, detail: str, code: str | None = None, headers: Mapping[str, str] | None = None
    ):
        super().__init__(status_code, detail, dict(headers) if headers else None)
        self.code = code or code_for(status_code)


def problem(status_code: int, detail: str, code: str, headers: Mapping[str, str] | None = None,
            errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    body = Problem(detail=detail, code=code, errors=errors).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status_code, headers=dict(headers) if headers else None)


def internal_error(exc: BaseException, method: str, path: str) -> JSONResponse:
    """500 with a request id; the traceback is logged under the same id."""
    request_id = uuid.uuid4().hex[:16]
    log.error("internal error (request %s) in %s %s", request_id, method, path, exc_info=exc)
    return problem(500, f"internal error (request {request_id})", "internal", {"X-Request-Id": request_id})


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("body", "task", "clean", 0)`` -> ``task.clean[0]``; the spec itself when no field."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    in_body = bool(loc) and loc[0] == "body"
    if out.startswith("[") and in_body:
        return "body"  # a position in the raw text (a JSON syntax error), not a field of the spec
    return out or ("spec" if in_body else "request")


def _field_and_message(err: dict[str, Any]) -> tuple[str, str]:
    """The field at fault and the message; a spec-wide check that names a field is moved onto it."""
    field = _field(err.get("loc", ()))
    msg = " ".join(str(err.get("msg", "invalid")).removeprefix("Value error, ").split())
    named = named_field(msg) if field in ("spec", "params") else None
    if named is not None:  # "params: tau: ..." -> "params.tau: ..."
        head, rest = named
        return (head if field == "spec" else f"params.{head}"), rest
    return field, msg


async def _invalid(_: Request, exc: Exception) -> Response:
    """422 whose ``detail`` is one line naming the field, with every error listed in ``errors``."""
    assert isinstance(exc, RequestValidationError)
    errors: list[dict[str, Any]] = []
    for e in exc.errors():
        field, msg = _field_and_message(e)
        errors.append({"field": field, "message": msg, "type": e.get("type")})
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem(422, detail, "invalid", errors=errors)


async def _http_error(_: Request, exc: Exception) -> Response:
    """Every HTTPException, the app's and the router's own (404, 405), with its code."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    code = exc.code if isinstance(exc, ApiError) else code_for(exc.status_code)
    detail = str(exc.detail)
    errors = None
    if exc.status_code == 422:  # a route's own check: "field: reason", listed as the spec's errors are
        field, sep, message = detail.partition(": ")
        errors = [{"field": field if sep else "request", "message": message if sep else detail,
                   "type": "value_error"}]
    return problem(exc.status_code, detail, code, exc.headers, errors)


def install(app: FastAPI) -> None:
    """The handlers; unexpected exceptions are answered by :class:`api.boundary.Boundary`."""
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
