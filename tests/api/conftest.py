"""One deployment for the HTTP tests: uvicorn and one Celery worker on the real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.service import Api, Service, deployment, ensure_redis


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    ensure_redis()
    with deployment(tmp_path_factory.mktemp("api-service"), keys=("alice", "bob")) as svc:
        yield svc


@pytest.fixture(scope="session")
def alice(service: Service) -> Api:
    return Api(service.url, service.keys["alice"])


@pytest.fixture(scope="session")
def bob(service: Service) -> Api:
    return Api(service.url, service.keys["bob"])
