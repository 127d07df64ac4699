"""The worker's sweeper against a real broker (Redis, and kombu's SQLAlchemy transport) and a
real SQLite store: a backlog is never multiplied, lost messages are made up until every job
ran once, unserved queues fail their jobs, and the worker's row comes and goes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from circuitd.settings import get_settings
from circuitd.store import TASK_NAME, Store
from tests.support.service import REDIS_URL, ensure_redis
from workers.app import make_app
from workers.sweeper import Sweeper, broker_counts


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.service), "sqlite"])
def broker(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Celery]:
    monkeypatch.setenv("CIRCUITD_REQUEUE_AFTER_S", "0")
    monkeypatch.setenv("CIRCUITD_UNSERVED_AFTER_S", "0.3")
    get_settings.cache_clear()
    if request.param == "redis":
        ensure_redis()
        app = make_app(REDIS_URL)
    else:
        app = make_app(f"sqla+sqlite:///{tmp_path / 'broker.db'}")
    yield app
    get_settings.cache_clear()


def _take(app: Celery, queue: str) -> str | None:
    """What a worker does first: fetch one message (and with it, the message is gone); its job id."""
    with app.connection_for_read() as conn:
        channel: Any = conn.default_channel
        message = channel.basic_get(queue=queue, no_ack=True)
    return None if message is None else message.decode()[0][0]


def test_a_backlog_is_not_multiplied_and_lost_messages_are_made_up(broker: Celery, tmp_path: Path) -> None:
    queue = f"t{uuid.uuid4().hex[:8]}-cpu"
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    jobs = [store.create_job("alice", {"seed": i}, queue)[0].id for i in range(6)]
    for job_id in jobs:
        broker.send_task(TASK_NAME, args=[job_id], queue=queue)
    sweeper = Sweeper(broker, store, "sweeper:1:t.r", [queue], interval=1)
    try:
        for _ in range(4):  # a backlog whose messages are all there: nothing is sent, round after round
            assert sweeper.sweep_once() == []
        assert broker_counts(broker, [queue]) == {queue: 6}

        lost = [_take(broker, queue), _take(broker, queue)]  # fetched by a worker
        assert set(lost) <= set(jobs) and broker_counts(broker, [queue]) == {queue: 4}
        store.register_worker("other:2:t.r", [queue], holding=lost)  # alive: both messages in flight
        for _ in range(3):
            assert sweeper.sweep_once() == []
        store.register_worker("other:2:t.r", [queue], holding=lost[:1])  # it dropped one
        assert sweeper.sweep_once() == []  # a shortfall seen once may be a message being fetched
        resent = sweeper.sweep_once()
        assert len(resent) == 1 and lost[0] not in resent and broker_counts(broker, [queue]) == {queue: 5}
        store.unregister_worker("other:2:t.r")  # and then died: the other message is lost too
        assert sweeper.sweep_once() == []
        resent += sweeper.sweep_once()
        assert len(resent) == 2 and broker_counts(broker, [queue]) == {queue: 6}
        for _ in range(3):
            assert sweeper.sweep_once() == []
        assert broker_counts(broker, [queue]) == {queue: 6}

        # A worker drains the queue; whatever was re-sent, every job runs, once.
        runs: list[str] = []
        for _ in range(60):
            job_id = _take(broker, queue)
            if job_id is not None and store.claim(job_id, "w").action == "run":
                store.finish(job_id, "w", {})
                runs.append(job_id)
            if not store.queued_counts():
                break
            resent += sweeper.sweep_once()
        assert sorted(runs) == sorted(jobs)
        assert all(store.get_job(j).status == "succeeded" and store.get_job(j).attempts == 1 for j in jobs)
        assert len(resent) <= 2 * len(lost)
    finally:
        with broker.connection_for_write() as conn:
            channel: Any = conn.default_channel
            channel.queue_purge(queue)


def test_the_sweeper_registers_fails_unserved_jobs_and_leaves(broker: Celery, tmp_path: Path) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    gpu, _ = store.create_job("alice", {"device": "cuda"}, f"{prefix}gpu")
    cpu, _ = store.create_job("alice", {}, f"{prefix}cpu")
    broker.send_task(TASK_NAME, args=[cpu.id], queue=f"{prefix}cpu")
    broker.send_task(TASK_NAME, args=[gpu.id], queue=f"{prefix}gpu")
    sweeper = Sweeper(broker, store, "sweeper:1:t.r", [f"{prefix}cpu"], interval=1)
    try:
        sweeper.sweep_once()
        assert [(w.id, w.queue_names) for w in store.live_workers()] == [("sweeper:1:t.r", [f"{prefix}cpu"])]
        time.sleep(0.4)
        sweeper.sweep_once()
        failed = store.get_job(gpu.id)
        assert failed.status == "failed" and failed.error_code == "unserved"
        assert failed.error.startswith(f"no worker serves queue '{prefix}gpu'")
        assert store.get_job(cpu.id).status == "queued"
        sweeper.start()
        sweeper.stop()  # a clean shutdown: the row goes
        assert store.live_workers() == []
    finally:
        with broker.connection_for_write() as conn:
            channel: Any = conn.default_channel
            for q in (f"{prefix}cpu", f"{prefix}gpu"):
                channel.queue_purge(q)
