"""``/healthz`` (the process answers), ``/readyz`` (database and broker reachable), ``/metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import telemetry
from api.deps import StoreDep, celery_client

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
        except Exception as exc:  # report, don't raise: the load balancer reads the status code
            checks[name] = f"error: {' '.join(str(exc).split())[:300]}"
    ready = all(v == "ok" for v in checks.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"status": "ready" if ready else "not ready", "checks": checks}


@router.get("/metrics")
def prometheus() -> Response:
    return Response(generate_latest(telemetry.registry), media_type=CONTENT_TYPE_LATEST)
