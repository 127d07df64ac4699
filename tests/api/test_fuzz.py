"""A property-based fuzz of the whole API from its own OpenAPI document, as a hostile tenant would
send it: schemathesis generates valid and invalid requests for every operation, then chains calls
along the links it infers (a job's ``id`` into every ``{job_id}``), over real HTTP to a real
deployment. No response may be a 5xx or break the document (status code, content type, body);
a second key must see none of the first key's jobs (404, as for a job that does not exist).

Deterministic: every Hypothesis run has a fixed seed and no example database (to explore locally,
``CIRCUITD_FUZZ_SEED`` picks another seed and ``CIRCUITD_FUZZ_EXAMPLES`` more cases). The counts
are printed (``pytest -s``) and are in the failure message.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from schemathesis import Case, GenerationMode, Response
from schemathesis.core.result import Ok
from schemathesis.schemas import APIOperation, BaseSchema

from tests.support.fuzz import (
    Tally,
    bearer,
    fuzz_operation,
    has_inputs,
    offer_valid_bodies,
    run_scenarios,
    two_key_workflow,
)
from tests.support.service import TINY, Api, Service, deployment, ensure_redis

pytestmark = [pytest.mark.service, pytest.mark.timeout(900)]

SEED = int(os.environ.get("CIRCUITD_FUZZ_SEED", "20240612"))
EXAMPLES = int(os.environ.get("CIRCUITD_FUZZ_EXAMPLES", "20"))  # per operation, mode and pinned job
SCENARIOS = 80  # state machine runs
STEPS = 6  # calls per scenario at most
PROBED_JOBS = 3  # the second key's pass: alice's jobs that bob asks for by id
PROBES = 4  # valid requests per operation and job of alice's
# The fuzz is one tenant sending fast: the rate limit is not what it tests (a 429 on every second
# request would leave nothing fuzzed). The limit of active jobs per owner stays as deployed, and the
# stale-job and SQLite lock timeouts are the deployed defaults again (the harness's short ones are for
# the tests that kill workers; a 1 s lock wait under this load would refuse what a deployment serves).
FUZZ_ENV = {
    "CIRCUITD_RATE_LIMIT_PER_S": "100000", "CIRCUITD_RATE_LIMIT_BURST": "100000",
    "CIRCUITD_STALE_AFTER_S": "60", "CIRCUITD_DB_BUSY_TIMEOUT_S": "30",
}
# Real jobs whose graphs the graph queries are pinned to, so that they answer more than 404.
EDGE_CIRCUIT = TINY
ATTRIBUTION = {
    "model": "zoo:synth", "method": "attribution-graph",
    "prompt": "When Mary and John went to the store, John gave a drink to",
}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A deployment of its own: the fuzz fills alice's account with junk jobs. Stopped even when it
    fails to start, so no process outlives the test."""
    ensure_redis()
    root = tmp_path_factory.mktemp("fuzz-service")
    with deployment(root, keys=("alice", "bob"), extra_env=FUZZ_ENV) as svc:
        yield svc


def _finished_jobs(alice: Api) -> dict[str, str]:
    """One edge circuit and one attribution graph, succeeded, by kind."""
    ids = {}
    for kind, spec in (("edge-circuit", EDGE_CIRCUIT), ("attribution", ATTRIBUTION)):
        r = alice.submit(spec)
        assert r.status_code == 202, r.text
        ids[kind] = r.json()["id"]
    for job_id in ids.values():
        done = alice.wait(job_id)
        assert done["status"] == "succeeded", done
    return ids


def _valid_bodies(alice: Api, jobs: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Cheap jobs to submit, and nodes of the attribution graph to validate (see offer_valid_bodies)."""
    r = alice.http.get(f"/v1/jobs/{jobs['attribution']}/graph/features", params={"n": 2})
    assert r.status_code == 200, r.text
    first, second = (f["id"] for f in r.json()["features"])
    return {
        "POST /v1/jobs": [EDGE_CIRCUIT, {**EDGE_CIRCUIT, "method": "eap-ig", "ig_steps": 2}],
        "POST /v1/jobs/{job_id}/graph/validate": [
            {"nodes": [first]}, {"nodes": [first, second], "scale": 0.5},
        ],
    }


def _operations(schema: BaseSchema) -> list[APIOperation]:
    """Every operation; those that delete last, so the finished jobs serve the others first."""
    out = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        out.append(result.ok())
    return sorted(out, key=lambda op: (op.method.upper() == "DELETE", op.label))  # deletions last


def _pins(operation: APIOperation, jobs: list[str]) -> list[dict[str, str]]:
    """Path parameters to hold fixed: none (ids as generated), then each of ``jobs``."""
    if "{job_id}" not in operation.path:
        return [{}]
    pins: list[dict[str, str]] = [{}]
    for job_id in jobs:
        pin = {"job_id": job_id}
        if "{other_id}" in operation.path:
            pin["other_id"] = job_id
        pins.append(pin)
    return pins


def _sender(key: str) -> Callable[[Case], Response]:
    http = requests.Session()

    def send(case: Case) -> Response:
        return case.call(session=http, headers=bearer(key), timeout=60)

    return send


def _stateless(schema: BaseSchema, tally: Tally, alice: str, jobs: list[str]) -> None:
    """Every operation, valid and invalid inputs, as alice."""
    send = _sender(alice)

    def judge(case: Case, response: Response) -> None:
        tally.observe("stateless", case, response)

    for operation in _operations(schema):
        for pin in _pins(operation, jobs):
            for mode in GenerationMode:
                if mode.is_negative and not has_inputs(operation, {"authorization", *pin}):
                    continue  # nothing left to make invalid
                fuzz_operation(
                    operation, mode, tally, send, judge, max_examples=EXAMPLES, seed=SEED,
                    headers=bearer(alice), path_parameters=pin,
                )


def _stateful(schema: BaseSchema, tally: Tally, alice: str, bob: str) -> None:
    """Chains of calls along the inferred links, as alice; bob replays each that reached a job."""
    workflow = two_key_workflow(schema, tally, alice, bob)
    run_scenarios(workflow, tally, scenarios=SCENARIOS, steps=STEPS, seed=SEED)


def _second_key(schema: BaseSchema, tally: Tally, svc: Service) -> None:
    """Bob sends valid requests to every operation on a job, with ids of alice's jobs: each must be
    404; and his list of jobs holds none of hers."""
    alice, bob = svc.keys["alice"], svc.keys["bob"]

    def alices_jobs() -> dict[str, Any]:
        listed = httpx.get(f"{svc.url}/v1/jobs", params={"limit": 500}, headers=bearer(alice), timeout=30)
        return listed.json()

    mine = alices_jobs()
    if not mine["items"]:  # the fuzz may have deleted every job it found: alice makes one more
        made = Api(svc.url, alice).submit(EDGE_CIRCUIT)
        assert made.status_code == 202, made.text
        Api(svc.url, alice).wait(made.json()["id"])
        mine = alices_jobs()
    ids = [job["id"] for job in mine["items"]][:PROBED_JOBS]
    assert ids, "alice has no job to probe"
    send = _sender(bob)

    def judge(case: Case, response: Response) -> None:
        tally.expect_not_found(case, response, "bob asks with the id of alice's job", "second key")

    for operation in _operations(schema):
        for pin in _pins(operation, ids)[1:]:
            fuzz_operation(
                operation, GenerationMode.POSITIVE, tally, send, judge, max_examples=PROBES, seed=SEED,
                headers=bearer(bob), path_parameters=pin,
            )
    theirs = httpx.get(f"{svc.url}/v1/jobs", params={"limit": 500}, headers=bearer(bob), timeout=30).json()
    assert not {job["id"] for job in theirs["items"]} & {job["id"] for job in mine["items"]}, theirs


def test_fuzz_whole_api_from_its_openapi(fuzzed: Service) -> None:
    api = Api(fuzzed.url, fuzzed.keys["alice"])
    jobs = _finished_jobs(api)
    schema = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json", timeout=30)
    offer_valid_bodies(schema, _valid_bodies(api, jobs))
    alice, bob = fuzzed.keys["alice"], fuzzed.keys["bob"]
    tally = Tally()
    with tally.timed("stateless"):
        _stateless(schema, tally, alice, list(jobs.values()))
    with tally.timed("stateful"):
        _stateful(schema, tally, alice, bob)
    with tally.timed("second key"):
        _second_key(schema, tally, fuzzed)
    report = tally.report()
    print(f"\nAPI fuzz (seed {SEED}):\n{report}")
    assert len(tally.operations) == len(_operations(schema)), report
    assert not tally.findings, report
