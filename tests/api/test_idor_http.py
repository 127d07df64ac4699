"""Every route under ``/v1/jobs/{job_id}`` answers another owner's job exactly as a job that
does not exist (404, same body). The routes are read from the app, so a new one is covered."""

from __future__ import annotations

from typing import Any

import pytest

from api.app import create_app
from tests.support.service import TINY, Api, Service

pytestmark = pytest.mark.service

MISSING = "f" * 32


def _job_routes() -> list[tuple[str, str, dict[str, Any]]]:
    """``(method, path template, operation)`` of every operation under ``/v1/jobs/{job_id}``."""
    doc = create_app().openapi()
    return [
        (method.upper(), path, op)
        for path, ops in doc["paths"].items() if path.startswith("/v1/jobs/{job_id}")
        for method, op in ops.items()
    ]


def _request(api: Api, method: str, template: str, op: dict[str, Any], job_id: str, other: str) -> Any:
    """The operation on ``job_id`` with every required parameter given a value of the right shape."""
    path = template.replace("{job_id}", job_id)
    query: dict[str, str] = {}
    for p in op.get("parameters", []):
        if p["in"] == "path" and p["name"] != "job_id":
            path = path.replace("{" + p["name"] + "}", other if p["name"].endswith("_id") else "input")
        elif p["in"] == "query" and p.get("required"):
            query[p["name"]] = "0" if p["schema"].get("type") in ("number", "integer") else "input"
    body = {"nodes": ["input"]} if "requestBody" in op else None
    return api.http.request(method, path, params=query, json=body)


def test_route_list_is_the_real_one() -> None:
    ops = {(m, p) for m, p, _ in _job_routes()}
    assert {
        ("GET", "/v1/jobs/{job_id}"), ("POST", "/v1/jobs/{job_id}/cancel"), ("DELETE", "/v1/jobs/{job_id}"),
        ("GET", "/v1/jobs/{job_id}/graph/paths"), ("POST", "/v1/jobs/{job_id}/graph/validate"),
    } <= ops
    assert len(ops) >= 12


def test_another_owners_job_is_404_like_a_missing_one(service: Service, alice: Api, bob: Api) -> None:
    job_id = alice.submit(TINY).json()["id"]
    alice.wait(job_id)
    bob_own = bob.submit(TINY).json()["id"]
    for method, template, op in _job_routes():
        theirs = _request(bob, method, template, op, job_id, bob_own)
        missing = _request(bob, method, template, op, MISSING, bob_own)
        where = f"{method} {template}"
        assert theirs.status_code == missing.status_code == 404, (where, theirs.text, missing.text)
        assert theirs.json() == {"detail": f"job {job_id} not found", "code": "not_found"}, where
        assert missing.json() == {"detail": f"job {MISSING} not found", "code": "not_found"}, where
        assert dict(theirs.headers).keys() == dict(missing.headers).keys(), where
    assert alice.job(job_id)["status"] == "succeeded"  # nothing bob did touched it
    assert alice.http.get(f"/v1/jobs/{job_id}/graph").status_code == 200
    bob.wait(bob_own)
