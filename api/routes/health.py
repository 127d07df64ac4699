"""``/healthz`` (the process answers), ``/readyz`` (database and broker reachable), ``/metrics``."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Response, status
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import telemetry
from api.deps import StoreDep, celery_client
from circuitd.settings import get_settings

log = logging.getLogger("circuitd.api")
router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _broker_ok() -> None:
    with celery_client().connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)


@router.get("/readyz")
def readyz(st: StoreDep, response: Response) -> dict[str, Any]:
    checks: dict[str, str] = {}
    for name, check in (("database", st.ping), ("broker", _broker_ok)):
        try:
            check()
            checks[name] = "ok"
        except Exception:  # report, don't raise: the load balancer reads the status code
            log.warning("readiness: %s unreachable", name, exc_info=True)  # the reason: it may name hosts
            checks[name] = "error: unreachable (the API's log has the reason)"
    ready = all(v == "ok" for v in checks.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"status": "ready" if ready else "not ready", "checks": checks}


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
def prometheus(authorization: Annotated[str | None, Header()] = None) -> Response:
    """Prometheus text; with ``CIRCUITD_METRICS_TOKEN`` set, only for ``Authorization: Bearer <it>``."""
    token = get_settings().metrics_token
    if token:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            detail = "metrics: send 'Authorization: Bearer <CIRCUITD_METRICS_TOKEN>'"
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})
    return Response(generate_latest(telemetry.registry), media_type=CONTENT_TYPE_LATEST)
