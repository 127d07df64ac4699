"""One deployment for the HTTP tests: uvicorn and one Celery worker on the real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.service import Api, Service, ensure_redis


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    ensure_redis()
    svc = Service(tmp_path_factory.mktemp("api-service"))
    worker = svc.start_worker("w1", wait=False)
    svc.url = svc.start_api()
    svc.keys = {name: svc.create_key(name) for name in ("alice", "bob")}
    svc.wait_ready(worker, "w1")
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def alice(service: Service) -> Api:
    return Api(service.url, service.keys["alice"])


@pytest.fixture(scope="session")
def bob(service: Service) -> Api:
    return Api(service.url, service.keys["bob"])
