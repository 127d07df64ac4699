"""Liveness on the database's clock, worker ids and the workers table, unserved queues, the
re-send rule's store side, retention, and stores made by an older version: on SQLite and
PostgreSQL (the ``store`` fixture)."""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest

from circuitd.errors import CircuitdError
from circuitd.settings import get_settings
from circuitd.store import Store, check_liveness_settings, holder_is_dead, worker_id

SPEC = {"model": "random:tiny", "task": "random"}


# --- one clock -------------------------------------------------------------------------------


def test_a_worker_whose_clock_is_an_hour_behind_is_not_taken_for_lost(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Heartbeats are stamped and compared in database time: the hosts' clocks do not enter."""
    job, _ = store.create_job("alice", SPEC, "cpu")
    real = time.time
    with monkeypatch.context() as skewed:  # the worker's host: its clock an hour behind
        skewed.setattr(time, "time", lambda: real() - 3600)
        assert store.claim(job.id, "slow-clock:1").action == "run"
        assert store.heartbeat(job.id, "slow-clock:1") is False
        held = store.get_job(job.id)
        assert held.heartbeat_at == pytest.approx(store.db_now(), abs=5)
        assert not store.worker_lost(held, stale_after=60)
    assert store.claim(job.id, "other:2", stale_after=60).action == "busy"
    assert store.requeue_lost(stale_after=60) == []
    assert not store.worker_lost(store.get_job(job.id), stale_after=60)


def test_worker_lost_is_a_running_job_with_a_stale_heartbeat(store: Store) -> None:
    job, _ = store.create_job("alice", SPEC, "cpu")
    assert not store.worker_lost(store.get_job(job.id), stale_after=0)  # queued: no worker to lose
    store.claim(job.id, "w:1")
    assert not store.worker_lost(store.get_job(job.id), stale_after=60)
    store._update(job.id, [], heartbeat_at=store.db_now() - 61)
    assert store.worker_lost(store.get_job(job.id), stale_after=60)
    store.fail(job.id, "w:1", "model: nope", "model")
    assert not store.worker_lost(store.get_job(job.id), stale_after=60)


def test_sqlite_needs_stale_after_above_busy_timeout_and_two_heartbeats(
    settings_env: pytest.MonkeyPatch, tmp_path
) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    settings_env.setenv("CIRCUITD_STALE_AFTER_S", "10")
    settings_env.setenv("CIRCUITD_DB_BUSY_TIMEOUT_S", "30")
    get_settings.cache_clear()
    with pytest.raises(CircuitdError) as err:
        check_liveness_settings(url)
    msg = str(err.value)
    assert "\n" not in msg and "CIRCUITD_STALE_AFTER_S (10 s)" in msg
    assert "CIRCUITD_DB_BUSY_TIMEOUT_S (30 s)" in msg
    check_liveness_settings("postgresql://db/x")  # PostgreSQL has no busy timeout to wait out
    settings_env.setenv("CIRCUITD_DB_BUSY_TIMEOUT_S", "5")
    get_settings.cache_clear()
    check_liveness_settings(url)  # 10 > 5 + 2 * 2
    settings_env.setenv("CIRCUITD_DB_BUSY_TIMEOUT_S", "0.25")
    get_settings.cache_clear()
    st = Store(url)  # the busy timeout reaches SQLite
    with st.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 250


# --- worker ids --------------------------------------------------------------------------------


def test_worker_ids_are_unique_per_process_and_name_their_namespace() -> None:
    me = worker_id()
    host, pid, suffix = me.split(":")
    assert pid == str(os.getpid()) and worker_id() == me and len(suffix.split(".")[1]) == 8
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # a forked pool child draws its own id
        os.write(write, worker_id().encode())
        os._exit(0)
    os.waitpid(child, 0)
    theirs = os.read(read, 200).decode()
    assert theirs.split(":")[1] == str(child) and theirs.split(":")[2] != suffix
    assert theirs.split(":")[2].split(".")[0] == suffix.split(".")[0]  # same pid namespace
    assert holder_is_dead(theirs)  # exited: taken over at once
    assert not holder_is_dead(me)
    assert not holder_is_dead(f"{host}:{child}:00000000.abcdef12")  # another container: unknown
    assert not holder_is_dead(f"{host}:{child}")  # the old form says nothing about namespaces


# --- the workers table and unserved queues ---------------------------------------------------


def test_workers_register_refresh_and_leave(store: Store) -> None:
    store.register_worker("a:1:t.r", ["cpu", "gpu", "cpu"])
    store.register_worker("b:2:t.r", ["cpu"])
    live = {w.id: w.queue_names for w in store.live_workers(stale_after=60)}
    assert live == {"a:1:t.r": ["cpu", "gpu"], "b:2:t.r": ["cpu"]}
    first = {w.id: w.last_seen for w in store.live_workers(stale_after=60)}
    time.sleep(0.05)
    store.register_worker("a:1:t.r", ["cpu"])  # a refresh: same row, seen later, queues as now
    again = {w.id: w for w in store.live_workers(stale_after=60)}
    assert again["a:1:t.r"].last_seen > first["a:1:t.r"] and again["a:1:t.r"].queue_names == ["cpu"]
    assert again["a:1:t.r"].started_at <= first["a:1:t.r"]
    assert store.held_jobs(stale_after=60) == set()
    store.register_worker("b:2:t.r", ["cpu"], holding=["j1", "j2"])
    assert store.held_jobs(stale_after=60) == {"j1", "j2"}
    store.unregister_worker("b:2:t.r")
    assert [w.id for w in store.live_workers(stale_after=60)] == ["a:1:t.r"]
    assert store.held_jobs(stale_after=60) == set()
    time.sleep(0.05)
    assert store.live_workers(stale_after=0.01) == []
    assert store.prune_workers(older_than=3600) == 0 and store.prune_workers(older_than=0.01) == 1


def test_a_job_whose_queue_no_live_worker_serves_fails(store: Store) -> None:
    gpu, _ = store.create_job("alice", SPEC, "gpu")
    cpu, _ = store.create_job("alice", SPEC, "cpu")
    store.stamp_queued({"cpu"})
    assert store.get_job(gpu.id).unserved_since is not None and store.get_job(cpu.id).unserved_since is None
    assert store.fail_unserved(unserved_after=3600) == []
    store.stamp_queued({"cpu", "gpu"})  # a gpu worker came: the wait starts over
    assert store.get_job(gpu.id).unserved_since is None
    store.stamp_queued({"cpu"})
    time.sleep(0.05)
    failed = store.fail_unserved(unserved_after=0.01)
    assert [j.id for j in failed] == [gpu.id]
    job = store.get_job(gpu.id)
    assert job.status == "failed" and job.error_code == "unserved"
    assert job.error == "no worker serves queue 'gpu': none was live for 0.01 s (CIRCUITD_UNSERVED_AFTER_S)"
    assert store.get_job(cpu.id).status == "queued"


# --- re-sending lost messages: the store's side -----------------------------------------------


def test_take_for_resend_oldest_first_each_once_then_to_the_back(store: Store) -> None:
    jobs = []
    for i in range(4):
        jobs.append(store.create_job("alice", SPEC | {"seed": i}, "cpu")[0].id)
        store.stamp_queued({"cpu"})
        time.sleep(0.02)
    store.create_job("alice", SPEC, "gpu")
    assert store.queued_counts() == {"cpu": 4, "gpu": 1}
    assert store.take_for_resend("cpu", 2, requeue_after=3600) == []  # none queued that long
    assert store.take_for_resend("cpu", 0, requeue_after=0) == []
    first = [j.id for j in store.take_for_resend("cpu", 2, requeue_after=0)]
    assert first == jobs[:2]
    second = [j.id for j in store.take_for_resend("cpu", 3, requeue_after=0)]
    assert second == [*jobs[2:], jobs[0]]  # the re-sent ones went to the back of the line
    store.claim(jobs[1], "w")
    assert store.queued_counts() == {"cpu": 3, "gpu": 1}
    assert store.queued_counts(exclude={jobs[2], jobs[3]}) == {"cpu": 1, "gpu": 1}  # held by workers
    taken = store.take_for_resend("cpu", 3, requeue_after=0, exclude={jobs[2]})
    # jobs[3] and jobs[0] were re-stamped by one call, so their database stamps may tie within
    # the clock's resolution: the send order breaks the tie
    assert [j.id for j in taken] == [jobs[3], jobs[0]]


def test_take_for_resend_breaks_a_tie_in_database_time_by_send_order(store: Store) -> None:
    """Jobs re-stamped in one round may share a database stamp (SQLite's clock has millisecond
    resolution); the line must still keep the order they were sent in, whatever their ids."""
    ids = [store.create_job("alice", SPEC | {"seed": i}, "cpu")[0].id for i in range(3)]
    sent = datetime.now(UTC) - timedelta(minutes=1)
    by_id = sorted(ids, reverse=True)  # send order opposite to id order
    for k, job_id in enumerate(by_id):
        store._update(job_id, [], queued_since=1000.0, enqueued_at=sent + timedelta(microseconds=k))
    assert [j.id for j in store.take_for_resend("cpu", 3, requeue_after=0)] == by_id


# --- retention -------------------------------------------------------------------------------


def test_retention_deletes_old_finished_jobs_and_their_graphs(store: Store) -> None:
    def finished(days_ago: float, status: str = "succeeded") -> str:
        job, _ = store.create_job("alice", SPEC | {"seed": days_ago, "status": status}, "cpu")
        store.claim(job.id, "w")
        store.finish(job.id, "w", {"n_edges": 1}, {"links": [1]})
        ended = datetime.now(UTC) - timedelta(days=days_ago)
        store._update(job.id, [], status=status, finished_at=ended)
        return job.id

    old, old_failed, recent = finished(10), finished(8, "failed"), finished(1)
    running, _ = store.create_job("alice", SPEC, "cpu")
    store.claim(running.id, "w")
    assert store.purge_finished(retention_days=None) == 0  # the default keeps everything
    assert store.purge_finished(retention_days=7, batch=1) == 2
    assert store.get_job(old) is None and store.get_job(old_failed) is None and store.load_graph(old) is None
    assert store.get_job(recent) is not None and store.load_graph(recent) == {"links": [1]}
    assert store.get_job(running.id).status == "running"
    assert store.purge_finished(retention_days=7) == 0


# --- a store made by an older version ---------------------------------------------------------


def test_an_older_sqlite_store_gets_the_new_columns_and_keeps_its_jobs(tmp_path) -> None:
    path = tmp_path / "old.db"
    st = Store(f"sqlite:///{path}")
    job, _ = st.create_job("alice", SPEC, "cpu")
    st.engine.dispose()
    with sqlite3.connect(path) as db:  # as the version before these columns left it
        for col in ("error_code", "queued_since", "unserved_since"):
            db.execute(f"ALTER TABLE jobs DROP COLUMN {col}")
        db.execute("DROP TABLE workers")
        db.execute("DROP INDEX ix_jobs_owner_status")
    with sqlite3.connect(path) as db:
        assert "error_code" not in {r[1] for r in db.execute("PRAGMA table_info(jobs)")}

    again = Store(f"sqlite:///{path}")
    assert again.get_job(job.id).status == "queued" and again.get_job(job.id).error_code is None
    with sqlite3.connect(path) as db:  # the quota's index is back too
        assert "ix_jobs_owner_status" in {r[1] for r in db.execute("PRAGMA index_list(jobs)")}
    again.claim(job.id, "w")
    assert again.fail(job.id, "w", "model: nope", "model")
    assert again.get_job(job.id).error_code == "model"
    again.register_worker("w:1:t.r", ["cpu"])
    assert Store(f"sqlite:///{path}").get_job(job.id).error == "model: nope"  # a second start adds nothing


def test_a_worker_refuses_to_start_when_stale_after_is_within_the_busy_timeout(tmp_path) -> None:
    import subprocess

    from tests.support.service import CLI, ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCUITD_")}
    env.update(CIRCUITD_DATA_DIR=str(tmp_path), CIRCUITD_STALE_AFTER_S="10", CIRCUITD_DB_BUSY_TIMEOUT_S="30",
               CIRCUITD_BROKER_URL="redis://127.0.0.1:1/0", PYTHONPATH=str(ROOT))
    out = subprocess.run([*CLI, "worker", "--queues", "cpu", "--name", "refused@%h"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("circuitd worker: CIRCUITD_STALE_AFTER_S (10 s) must exceed ")
    assert "CIRCUITD_DB_BUSY_TIMEOUT_S (30 s)" in line
