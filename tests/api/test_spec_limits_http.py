"""Limits before work, over real HTTP: a spec past a bound is a 422 naming the field (and the
setting that raises the limit), and no job is created, so no worker ever sees it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.service import TINY, Api

pytestmark = pytest.mark.service  # real Redis, a Celery worker and uvicorn over HTTP


def _owner_jobs(api: Api) -> int:
    """The caller's jobs, every status."""
    r = api.http.get("/v1/jobs", params={"limit": 1})
    r.raise_for_status()
    return r.json()["total"]


@pytest.mark.parametrize(
    "change,field,message",
    [
        ({"task_params": {"length": 1_000_000_000}}, "task_params.length",
         "1000000000 exceeds the limit of 512 (CIRCUITD_MAX_TOKENS)"),
        ({"task_params": {"foo": 1}}, "task_params.foo", "Extra inputs are not permitted"),
        ({"batch_size": 4096}, "batch_size", "4096 exceeds the limit of 256 (CIRCUITD_MAX_BATCH_SIZE)"),
        ({"device": "banana"}, "device", "'banana' is not cpu, mps, cuda or cuda:N"),
        ({"task": {"clean": [[1, -1]], "corrupted": [[1, 2]], "correct": [1], "incorrect": [2]}},
         "task.clean[0]", "token id -1 is outside 0..2147483647"),
    ],
)
def test_a_spec_past_a_bound_is_422_naming_the_field(
    alice: Api, change: dict[str, Any], field: str, message: str
) -> None:
    before = _owner_jobs(alice)
    r = alice.submit(TINY | change)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["detail"] == f"{field}: {message}"
    assert [(e["field"], e["message"]) for e in problem["errors"]] == [(field, message)]
    assert _owner_jobs(alice) == before


def test_infinity_as_a_threshold_is_422(alice: Api) -> None:
    body = json.dumps(TINY | {"threshold": float("inf")})
    assert '"threshold": Infinity' in body  # what Python's json writes, and json.loads reads back
    before = _owner_jobs(alice)
    r = alice.http.post("/v1/jobs", content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == "params.threshold: Input should be a finite number"
    assert _owner_jobs(alice) == before


def test_task_params_within_bounds_run_and_are_published(alice: Api) -> None:
    schema = alice.http.get("/v1/tasks").json()["generator_params"]
    assert schema["random"]["properties"]["length"]["default"] == 6
    assert schema["random"]["additionalProperties"] is False
    assert schema["ioi"]["properties"]["templates"]["enum"] == ["ABBA", "BABA", "both"]
    r = alice.submit(TINY | {"task_params": {"length": "5"}})
    assert r.status_code == 202, r.text
    job = alice.wait(r.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["spec"]["task_params"] == {"length": 5}  # stored as the generator's model read it
