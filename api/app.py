"""The FastAPI app: ``uvicorn api.app:app``. Imports no torch: it starts fast and holds no model."""

from __future__ import annotations

import json

from fastapi import FastAPI

from api import errors
from api.boundary import Boundary
from api.routes import catalog, graphs, health, jobs, ui
from api.telemetry import MetricsMiddleware
from circuitd import __version__


def create_app() -> FastAPI:
    app = FastAPI(
        title="circuitd", version=__version__,
        description="Automated circuit discovery as a service: submit a JobSpec, poll, fetch the graph.",
    )
    errors.install(app)
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(Boundary)  # added last: outermost, before metrics, auth and body parsing
    owned = errors.responses(400, 401, 404, 409, 413, 422, 429, 500, 503)
    app.include_router(jobs.router, prefix="/v1", responses=owned)
    app.include_router(graphs.router, prefix="/v1", responses=owned)
    app.include_router(catalog.router, prefix="/v1", responses=errors.responses(401, 422, 429, 500))
    app.include_router(health.router, responses=errors.responses(401, 500))
    app.include_router(ui.router, include_in_schema=False)  # the web UI's static files: no API surface
    return app


app = create_app()


def openapi_text() -> str:
    """The OpenAPI document in the stable text form of the committed snapshot
    (tests/api/openapi.json; ``make openapi`` rewrites it after a deliberate change)."""
    return json.dumps(create_app().openapi(), indent=1, sort_keys=True) + "\n"
