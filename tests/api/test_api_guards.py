"""The app's guards in process, on a real SQLite store: the service's access rules reach every
route, unexpected failures answer cleanly, every error has a code, bounded paging, bounded
metrics labels, the metrics token, and key lookups kept off the event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event

from api.app import create_app
from circuitd.access import full_access, has_full_access
from circuitd.settings import get_settings
from circuitd.store import get_store


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FastAPI, dict[str, str]]]:
    """A fresh app on its own SQLite store, and an owner's auth header."""
    for name in [k for k in os.environ if k.startswith("CIRCUITD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CIRCUITD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CIRCUITD_DATABASE_URL", f"sqlite:///{tmp_path / 'circuitd.db'}")
    get_settings.cache_clear()
    key = get_store().create_key("alice")
    app = create_app()

    @app.get("/probe/access")
    def access_sync() -> dict[str, bool]:  # a sync route: runs in the threadpool
        return {"full": has_full_access()}

    @app.get("/probe/access-async")
    async def access_async() -> dict[str, bool]:
        return {"full": has_full_access()}

    @app.get("/probe/boom")
    def boom() -> None:
        raise RuntimeError(f"cannot open {tmp_path}/secret.db")

    yield app, {"Authorization": f"Bearer {key}"}
    get_settings.cache_clear()


def test_every_request_runs_under_the_service_rules(local: tuple[FastAPI, dict[str, str]]) -> None:
    """Even when the caller's context has full access (as the CLI's does), the app does not."""
    app, _ = local

    async def ask() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [(await client.get(p)).json()["full"] for p in ("/probe/access", "/probe/access-async")]

    with full_access():
        assert has_full_access()
        assert asyncio.run(ask()) == [False, False]


def test_unexpected_failure_is_500_with_a_request_id_and_no_internals(
    local: tuple[FastAPI, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = local
    with caplog.at_level(logging.ERROR, logger="circuitd.api"):
        r = TestClient(app).get("/probe/boom")
    assert r.status_code == 500
    body = r.json()
    m = re.fullmatch(r"internal error \(request ([0-9a-f]{16})\)", body["detail"])
    assert m and body == {"detail": body["detail"], "code": "internal"}
    assert r.headers["x-request-id"] == m.group(1)
    assert "RuntimeError" not in r.text and "secret.db" not in r.text and "/" not in body["detail"]
    logged = [rec for rec in caplog.records if m.group(1) in rec.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert "secret.db" in str(logged[0].exc_info[1])


@pytest.mark.parametrize(
    ("method", "path", "auth", "status", "code"),
    [
        ("GET", "/v1/jobs/0123456789abcdef", True, 404, "not_found"),
        ("GET", "/v1/jobs", False, 401, "unauthorized"),
        ("DELETE", "/v1/jobs/0123456789abcdef", True, 404, "not_found"),
        ("PUT", "/v1/jobs", True, 405, "method_not_allowed"),
        ("GET", "/v1/nowhere", True, 404, "not_found"),
        ("GET", "/v1/jobs?status=sleeping", True, 422, "invalid"),
    ],
)
def test_every_error_has_a_detail_and_a_stable_code(
    local: tuple[FastAPI, dict[str, str]], method: str, path: str, auth: bool, status: int, code: str
) -> None:
    app, headers = local
    r = TestClient(app).request(method, path, headers=headers if auth else {})
    assert r.status_code == status
    body = r.json()
    assert body["code"] == code and isinstance(body["detail"], str) and body["detail"]
    assert ("errors" in body) == (status == 422)


@pytest.mark.parametrize("params", [{"offset": "1e23"}, {"offset": str(10**23)}, {"offset": str(10**9 + 1)},
                                    {"offset": "-1"}, {"limit": "501"}, {"limit": str(10**30)}])
def test_paging_out_of_bounds_is_422_naming_the_field(
    local: tuple[FastAPI, dict[str, str]], params: dict[str, str]
) -> None:
    app, headers = local
    r = TestClient(app).get("/v1/jobs", params=params, headers=headers)
    assert r.status_code == 422, r.text
    field = next(iter(params))
    assert r.json()["detail"].startswith(f"{field}: ") and r.json()["errors"][0]["field"] == field


def test_paging_at_the_bound_answers(local: tuple[FastAPI, dict[str, str]]) -> None:
    app, headers = local
    r = TestClient(app).get("/v1/jobs", params={"offset": str(10**9)}, headers=headers)
    assert r.status_code == 200 and r.json()["items"] == [] and r.json()["offset"] == 10**9


def _series(text: str) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in text.splitlines()
            if line.startswith(("circuitd_http_requests_total", "circuitd_http_request_seconds_count"))}


def test_invented_methods_do_not_grow_the_metrics(local: tuple[FastAPI, dict[str, str]]) -> None:
    app, _ = local
    client = TestClient(app)
    assert client.request("FOO0", "/healthz").status_code == 405
    assert client.request("FOO0", "/no/such/path").status_code == 404
    client.get("/metrics")  # a scrape is counted after it answers: the next one shows it
    before = _series(client.get("/metrics").text)
    for i in range(1, 51):
        client.request(f"FOO{i}", "/healthz")
        client.request(f"FOO{i}", f"/no/such/path/{i}")
    after = _series(client.get("/metrics").text)
    assert after == before
    assert 'method="OTHER",route="/healthz",status="405"' in "\n".join(after)
    assert 'route="unmatched"' in "\n".join(after) and "FOO" not in "\n".join(after)


def test_metrics_token_guards_metrics(
    local: tuple[FastAPI, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = local
    client = TestClient(app)
    assert client.get("/metrics").status_code == 200  # no token set: open, as before
    monkeypatch.setenv("CIRCUITD_METRICS_TOKEN", "s3cret-token")
    get_settings.cache_clear()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
        r = client.get("/metrics", headers=headers)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        assert "CIRCUITD_METRICS_TOKEN" in r.json()["detail"] and "s3cret" not in r.text
    ok = client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200 and "circuitd_http_requests_total" in ok.text


def test_key_lookup_on_a_cache_miss_runs_off_the_event_loop(local: tuple[FastAPI, dict[str, str]]) -> None:
    app, headers = local
    on_loop: list[bool] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "api_keys" in statement:
            try:
                asyncio.get_running_loop()
                on_loop.append(True)
            except RuntimeError:
                on_loop.append(False)

    engine = get_store().engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        client = TestClient(app)
        assert client.get("/v1/jobs", headers=headers).status_code == 200  # a miss: one lookup
        assert client.get("/v1/jobs", headers=headers).status_code == 200  # a hit: none
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer cdk_unknown"}).status_code == 401
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert on_loop == [False, False]
