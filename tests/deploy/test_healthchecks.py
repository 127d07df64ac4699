"""compose.yaml's Redis and worker healthchecks, run as written against a Redis that wants a
password: they pass with the password from the environment and fail without it."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.compose_file import interpolate, load, read_env_file
from tests.support.private_redis import PrivateRedis, password_redis
from tests.support.service import ROOT, wait_until

pytestmark = pytest.mark.service  # a real Redis, a Celery worker process


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return interpolate(load(), read_env_file())["services"]  # $$ became $, as Compose passes it on


@pytest.fixture(scope="module")
def redis_server() -> Iterator[PrivateRedis]:
    with password_redis() as server:
        yield server


def shell(test: list[str]) -> str:
    """A healthcheck's test as the shell line Docker runs."""
    kind, *rest = test
    return rest[0] if kind == "CMD-SHELL" else shlex.join(rest)


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CIRCUITD_", "REDIS", "BROKER_URL", "DATABASE_URL"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # circuitd, celery
    return env


def test_redis_healthcheck_authenticates(services: dict[str, Any], redis_server: PrivateRedis) -> None:
    line = shell(services["redis"]["healthcheck"]["test"]).replace(
        "redis-cli", f"redis-cli -p {redis_server.port}"
    )
    run = {"shell": True, "capture_output": True, "text": True, "timeout": 30}
    ok = subprocess.run(line, env={**base_env(), "REDISCLI_AUTH": redis_server.password}, **run)
    assert ok.returncode == 0, ok.stderr
    assert subprocess.run(line, env=base_env(), **run).returncode == 1  # NOAUTH: no PONG
    wrong = subprocess.run(line, env={**base_env(), "REDISCLI_AUTH": "wrong"}, **run)
    assert wrong.returncode == 1


def test_worker_healthcheck_pings_through_a_password_broker(
    services: dict[str, Any], redis_server: PrivateRedis, tmp_path: Path
) -> None:
    worker = services["worker-cpu"]
    env = {
        **base_env(), "BROKER_URL": redis_server.url, "DATABASE_URL": f"sqlite:///{tmp_path / 'circuitd.db'}",
        "CIRCUITD_DATA_DIR": str(tmp_path), "WORKER_NAME": worker["environment"]["WORKER_NAME"],
        "HOSTNAME": socket.gethostname(), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(worker["command"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_until(lambda: " ready." in log_path.read_text() or proc.poll() is not None, 120, "the worker")
        assert proc.poll() is None, log_path.read_text()
        assert "redis://:**@127.0.0.1" in log_path.read_text()  # Celery's banner hides the password
        assert redis_server.password not in log_path.read_text()

        check = shell(worker["healthcheck"]["test"])
        run = {"shell": True, "cwd": ROOT, "capture_output": True, "text": True, "timeout": 60}
        ok = subprocess.run(check, env=env, **run)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert f"{env['WORKER_NAME']}@{env['HOSTNAME']}: OK" in ok.stdout
        no_password = {**env, "BROKER_URL": f"redis://127.0.0.1:{redis_server.port}/0"}
        assert subprocess.run(check, env=no_password, **run).returncode != 0
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
