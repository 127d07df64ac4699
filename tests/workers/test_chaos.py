"""Chaos: the broker restarted (with its append-only file, or losing every message) and the
database unreachable for longer than ``stale_after``, under real Celery worker processes, a
real Redis started here on its own port and the API over HTTP. Whatever happens, every job
ends exactly once: one terminal state, its graph stored once, none lost, none left queued
or running."""

from __future__ import annotations

import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from circuitd.store import GraphBlob
from tests.support.service import (
    TINY,
    Api,
    Service,
    deployment,
    free_port,
    long_spec,
    redis_answers,
    wait_until,
)

pytestmark = pytest.mark.service  # redis-server from PATH, Celery worker processes and uvicorn

CHAOS_ENV = {"CIRCUITD_REQUEUE_AFTER_S": "1"}  # a message lost is made up within seconds


class RedisServer:
    """A redis-server of the test's own, on a free port, that the test kills and starts again."""

    def __init__(self, root: Path, append_only: bool):
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not on PATH (scripts/ensure-redis.sh installs it)")
        self.root, self.append_only, self.port = root, append_only, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        aof = ["--appendonly", "no"]
        if self.append_only:  # every write on disk before it is acknowledged
            aof = ["--appendonly", "yes", "--appendfsync", "always"]
        log = open(self.root / "redis.log", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.root),
             "--save", "", *aof], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_until(lambda: redis_answers(self.url), 20, f"redis-server on port {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


def _ended_exactly_once(svc: Service, api: Api, jobs: list[str]) -> None:
    """Each job succeeded, its end was written once, its graph stored once; nothing left in flight."""
    for job_id in jobs:
        done = api.wait(job_id, timeout=150)
        assert done["status"] == "succeeded", (done, svc.log("w1.log")[-4000:])
        assert done["error"] is None and done["error_code"] is None and not done["worker_lost"]
    time.sleep(2)  # a late duplicate message would show up here
    logs = "".join(svc.log(p.name) for p in svc.root.glob("w*.log"))
    store = svc.store()
    with store.session() as s:
        graphs = [g.job_id for g in s.exec(GraphBlob.__table__.select()).all()]  # type: ignore[attr-defined]
    assert sorted(graphs) == sorted(jobs)
    for job_id in jobs:
        ends = re.findall(rf"job {job_id}: ended (\w+)", logs)
        assert ends == ["succeeded"], (job_id, ends)
        assert store.get_job(job_id).status == "succeeded"
    counts = store.count_by_status()
    assert counts["queued"] == counts["running"] == 0 and counts["succeeded"] == len(jobs)


def _running(api: Api, job_id: str) -> None:
    api.wait(job_id, check=lambda j: j["status"] == "running" and j["progress"] > 0.05, timeout=120)


@pytest.mark.parametrize("append_only", [True, False], ids=["aof", "no-aof"])
def test_redis_restarted_with_jobs_queued_and_running(tmp_path: Path, append_only: bool) -> None:
    redis = RedisServer(tmp_path / "redis", append_only)
    redis.start()
    try:
        with deployment(tmp_path, no_auth=True, broker=redis.url, extra_env=CHAOS_ENV) as svc:
            w1, api = svc.procs[0], Api(svc.url, None)
            running = api.submit(long_spec(24)).json()["id"]
            queued = [api.submit(TINY | {"seed": i}).json()["id"] for i in range(4)]
            _running(api, running)
            assert all(api.job(j)["status"] == "queued" for j in queued)

            redis.kill()  # every message with it, unless the append-only file kept them
            time.sleep(1)
            redis.start()

            _ended_exactly_once(svc, api, [running, *queued])
            assert w1.poll() is None
    finally:
        redis.kill()


def test_database_unreachable_for_longer_than_stale_after(tmp_path: Path) -> None:
    """Another process holds SQLite's write lock for stale_after + 3 s: the worker's heartbeats
    and writes wait and fail meanwhile, the API reports the running job's worker as lost, and
    afterwards every job still ends once."""
    stale = 3.0
    redis = RedisServer(tmp_path / "redis", append_only=False)
    redis.start()
    env = CHAOS_ENV | {"CIRCUITD_STALE_AFTER_S": str(stale), "CIRCUITD_DB_BUSY_TIMEOUT_S": "1"}
    try:
        with deployment(tmp_path, no_auth=True, broker=redis.url, extra_env=env) as svc:
            w1, api = svc.procs[0], Api(svc.url, None)
            running = api.submit(long_spec(24)).json()["id"]
            queued = [api.submit(TINY | {"seed": i}).json()["id"] for i in range(3)]
            _running(api, running)
            assert not api.job(running)["worker_lost"]

            lock = sqlite3.connect(svc.root / "circuitd.db", isolation_level=None)
            lock.execute("BEGIN EXCLUSIVE")
            try:
                held_since = time.monotonic()
                seen = wait_until(lambda: api.job(running)["worker_lost"], stale + 3, "worker_lost")
                assert seen and time.monotonic() - held_since >= stale - 1  # not before it went stale
                time.sleep(max(0.0, held_since + stale + 3 - time.monotonic()))
            finally:
                lock.execute("ROLLBACK")
                lock.close()

            _ended_exactly_once(svc, api, [running, *queued])
            assert w1.poll() is None
    finally:
        redis.kill()
