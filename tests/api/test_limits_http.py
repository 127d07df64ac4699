"""The API's limits over real HTTP (uvicorn, Redis, SQLite; no worker, so jobs stay queued):
the body limit before auth, the per-owner job quota, the per-owner request rate."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest

from tests.support.service import TINY, Api, Service, ensure_redis

pytestmark = pytest.mark.service

BODY_LIMIT = 4096
QUOTA = 2


@dataclass
class Limited:
    service: Service
    quota_url: str  # body limit and quota low, rate high
    rate_url: str  # rate low: 1 per second, bursts of 3
    keys: dict[str, str]

    def api(self, owner: str, url: str | None = None) -> Api:
        return Api(url or self.quota_url, self.keys[owner])


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Limited]:
    ensure_redis()
    svc = Service(tmp_path_factory.mktemp("limits"), extra_env={
        "CIRCUITD_MAX_BODY_BYTES": str(BODY_LIMIT), "CIRCUITD_MAX_ACTIVE_JOBS_PER_OWNER": str(QUOTA),
        "CIRCUITD_RATE_LIMIT_PER_S": "1000", "CIRCUITD_RATE_LIMIT_BURST": "1000",
    })
    try:
        quota_url = svc.start_api()
        svc.extra_env |= {"CIRCUITD_RATE_LIMIT_PER_S": "1", "CIRCUITD_RATE_LIMIT_BURST": "3"}
        rate_url = svc.start_api()
        st = svc.store()
        keys = {name: st.create_key(name) for name in ("alice", "bob", "carol", "dave", "erin", "chunky")}
        yield Limited(svc, quota_url, rate_url, keys)
    finally:
        svc.stop()


def _too_large(r: httpx.Response) -> None:
    assert r.status_code == 413, r.text
    body = r.json()
    assert body["code"] == "too_large"
    assert body["detail"].startswith("request body: ")
    assert body["detail"].endswith(f"over the limit of {BODY_LIMIT} bytes (CIRCUITD_MAX_BODY_BYTES)")


def test_oversized_body_is_413_before_auth(limited: Limited) -> None:
    big = b'{"model": "' + b"x" * (16 * BODY_LIMIT) + b'"}'
    for key in (None, "cdk_not-a-key"):
        r = Api(limited.quota_url, key).http.post("/v1/jobs", content=big,
                                                   headers={"content-type": "application/json"})
        _too_large(r)
        assert f"{len(big)} bytes" in r.json()["detail"]
    small = Api(limited.quota_url, None).submit(TINY)  # under the limit: on to auth
    assert small.status_code == 401 and small.json()["code"] == "unauthorized"


def test_chunked_body_is_counted_and_cut(limited: Limited) -> None:
    def chunks(n: int, size: int = 1024) -> Iterator[bytes]:
        yield b'{"model": "'
        for _ in range(n):
            yield b"x" * size
        yield b'"}'

    r = Api(limited.quota_url, None).http.post("/v1/jobs", content=chunks(16),
                                               headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    _too_large(r)
    assert "streamed" in r.json()["detail"]

    spec = json.dumps(TINY).encode()  # a chunked body under the limit is read whole
    ok = limited.api("chunky").http.post("/v1/jobs", content=iter([spec[:10], spec[10:]]),
                                         headers={"content-type": "application/json"})
    assert ok.status_code == 202, ok.text


def test_an_owner_at_its_quota_is_429_while_others_are_served(limited: Limited) -> None:
    alice, bob = limited.api("alice"), limited.api("bob")
    first = alice.submit(TINY, **{"Idempotency-Key": "quota-1"})
    second = alice.submit(TINY | {"seed": 2})
    assert first.status_code == second.status_code == 202
    refused = alice.submit(TINY | {"seed": 3})
    assert refused.status_code == 429
    assert refused.headers["retry-after"].isdigit() and int(refused.headers["retry-after"]) >= 1
    body = refused.json()
    assert body["code"] == "quota" and "CIRCUITD_MAX_ACTIVE_JOBS_PER_OWNER" in body["detail"]
    assert f"at the limit of {QUOTA}" in body["detail"]
    assert limited.service.store().list_jobs("alice")[1] == QUOTA  # the refused job was not created

    assert bob.submit(TINY).status_code == 202  # another owner is still served
    replay = alice.submit(TINY, **{"Idempotency-Key": "quota-1"})  # a replay creates nothing: allowed
    assert replay.status_code == 202 and replay.json()["id"] == first.json()["id"]
    assert replay.headers["idempotent-replayed"] == "true"

    cancelled = alice.http.post(f"/v1/jobs/{second.json()['id']}/cancel")  # a finished job frees a place
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    third = alice.submit(TINY | {"seed": 3})
    assert third.status_code == 202
    assert alice.submit(TINY | {"seed": 4}).status_code == 429
    assert alice.http.delete(f"/v1/jobs/{third.json()['id']}").status_code == 204  # so does a deleted one
    assert alice.submit(TINY | {"seed": 4}).status_code == 202


def test_concurrent_submissions_cannot_pass_the_quota_together(limited: Limited) -> None:
    carol = limited.api("carol")
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: carol.submit(TINY | {"seed": i}).status_code, range(8)))
    assert sorted(codes) == [202] * QUOTA + [429] * (8 - QUOTA)
    assert limited.service.store().list_jobs("carol")[1] == QUOTA


def test_an_owner_over_its_rate_is_429_while_others_are_served(limited: Limited) -> None:
    dave, erin = limited.api("dave", limited.rate_url), limited.api("erin", limited.rate_url)
    codes = [dave.http.get("/v1/jobs").status_code for _ in range(3)]  # the burst
    refused = dave.http.get("/v1/jobs")
    assert codes == [200, 200, 200] and refused.status_code == 429
    retry = refused.headers["retry-after"]
    assert retry.isdigit() and 1 <= int(retry) <= 2
    body = refused.json()
    assert body["code"] == "rate_limited" and "CIRCUITD_RATE_LIMIT_PER_S" in body["detail"]
    assert erin.http.get("/v1/jobs").status_code == 200  # each owner has its own bucket
    time.sleep(int(retry))
    assert dave.http.get("/v1/jobs").status_code == 200  # refilled
