"""The job store on SQLite and on PostgreSQL: its compare-and-set transitions are what keep a
job from being lost or run twice, so they are pinned here on both databases."""

from __future__ import annotations

import threading
import time

import pytest

from circuitd.errors import CircuitdError
from circuitd.store import IdempotencyConflict, Store, worker_id

SPEC = {"model": "random:tiny", "task": "random"}


def test_create_get_list_and_owner_isolation(store: Store) -> None:
    a, created = store.create_job("alice", SPEC, "cpu")
    assert created and a.status == "queued" and a.attempts == 0 and a.created_at.tzinfo is not None
    b, _ = store.create_job("alice", SPEC | {"seed": 1}, "cpu")
    store.create_job("bob", SPEC, "cpu")
    assert store.get_job(a.id, "alice").spec == SPEC
    assert store.get_job(a.id, "bob") is None
    jobs, total = store.list_jobs("alice", limit=1)
    assert total == 2 and [j.id for j in jobs] == [b.id]
    jobs, _ = store.list_jobs("alice", limit=1, offset=1)
    assert [j.id for j in jobs] == [a.id]
    assert store.list_jobs("alice", status="running") == ([], 0)
    assert store.count_by_status()["queued"] == 3


def test_idempotency_key_is_unique_per_owner(store: Store) -> None:
    a, created = store.create_job("alice", SPEC, "cpu", "k")
    again, created_again = store.create_job("alice", SPEC, "cpu", "k")
    assert created and not created_again and again.id == a.id
    with pytest.raises(IdempotencyConflict):
        store.create_job("alice", SPEC | {"seed": 2}, "cpu", "k")
    other, created_other = store.create_job("bob", SPEC, "cpu", "k")
    assert created_other and other.id != a.id


def test_concurrent_idempotent_creates_make_one_job(store: Store) -> None:
    ids: list[str] = []
    lock = threading.Lock()

    def create() -> None:
        job, _ = store.create_job("alice", SPEC, "cpu", "race")
        with lock:
            ids.append(job.id)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and store.list_jobs("alice")[1] == 1


def test_claim_runs_once_then_busy_then_done(store: Store) -> None:
    job, _ = store.create_job("alice", SPEC, "cpu")
    results: list[str] = []
    threads = [threading.Thread(target=lambda i=i: results.append(store.claim(job.id, f"w{i}").action))
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["busy"] * 5 + ["run"]
    held = store.get_job(job.id)
    assert held.status == "running" and held.attempts == 1 and held.started_at is not None
    me = held.worker
    assert store.heartbeat(job.id, me) is False and store.heartbeat(job.id, "intruder") is None
    assert store.update_progress(job.id, me, 0.5, "half", force=True)
    assert not store.update_progress(job.id, "intruder", 0.6, "x", force=True)
    assert not store.finish(job.id, "intruder", {"n_edges": 1})
    assert store.finish(job.id, me, {"n_edges": 3, "faithfulness": float("nan")}, {"links": [1, 2, 3]})
    done = store.get_job(job.id)
    assert done.status == "succeeded" and done.progress == 1.0 and done.summary == {"n_edges": 3,
                                                                                      "faithfulness": None}
    assert store.load_graph(job.id) == {"links": [1, 2, 3]}
    assert store.claim(job.id, "w9").action == "done"  # a redelivered job that succeeded is not rerun
    assert store.get_job(job.id).attempts == 1


def test_progress_writes_are_throttled(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRCUITD_PROGRESS_INTERVAL_S", "60")
    from circuitd.settings import get_settings

    get_settings.cache_clear()
    try:
        job, _ = store.create_job("alice", SPEC, "cpu")
        store.claim(job.id, "w")
        assert store.update_progress(job.id, "w", 0.1, "a")
        assert not store.update_progress(job.id, "w", 0.2, "b")
        assert store.get_job(job.id).progress == pytest.approx(0.1)
        assert store.update_progress(job.id, "w", 1.0, "done")  # the end is always written
    finally:
        get_settings.cache_clear()


def test_stale_holder_is_taken_over_and_cannot_write_after(store: Store) -> None:
    job, _ = store.create_job("alice", SPEC, "cpu")
    assert store.claim(job.id, "old-host:1").action == "run"
    assert store.claim(job.id, "new-host:2", stale_after=60).action == "busy"
    time.sleep(0.05)
    assert store.claim(job.id, "new-host:2", stale_after=0.01).action == "run"
    taken = store.get_job(job.id)
    assert taken.worker == "new-host:2" and taken.attempts == 2
    assert not store.finish(job.id, "old-host:1", {}), "the presumed-dead worker must not overwrite"
    assert store.heartbeat(job.id, "old-host:1") is None
    assert store.finish(job.id, "new-host:2", {"n_edges": 1})


def test_holder_that_was_a_dead_local_process_is_taken_over_at_once(store: Store) -> None:
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    host, _, rest = worker_id().split(":")
    job, _ = store.create_job("alice", SPEC, "cpu")
    store.claim(job.id, f"{host}:{gone.pid}:{rest}")
    assert store.claim(job.id, "w2", stale_after=3600).action == "run"
    # The same host name and pid in another container (another pid namespace) is not ours to check.
    other, _ = store.create_job("alice", SPEC, "cpu")
    store.claim(other.id, f"{host}:{gone.pid}:0000beef.{rest.split('.')[1]}")
    assert store.claim(other.id, "w2", stale_after=3600).action == "busy"


def test_requeue_lost_resets_each_lost_job_once(store: Store) -> None:
    lost, _ = store.create_job("alice", SPEC, "cpu")
    store.claim(lost.id, "gone-host:1")
    live, _ = store.create_job("alice", SPEC, "cpu")
    store.claim(live.id, "live-host:2")
    assert store.requeue_lost(stale_after=60) == []
    store._update(lost.id, [], heartbeat_at=store.db_now() - 61)  # its last beat, a minute ago
    swept = store.requeue_lost(stale_after=60)
    assert [j.id for j in swept] == [lost.id]
    job = store.get_job(lost.id)
    assert job.status == "queued" and job.worker is None and "no heartbeat for 61" in job.stage
    assert job.queued_since == pytest.approx(store.db_now(), abs=5)
    assert store.requeue_lost(stale_after=60) == []  # each lost job is re-sent once
    assert store.claim(lost.id, "w2").action == "run" and store.get_job(lost.id).attempts == 2


def test_a_job_that_keeps_losing_its_worker_fails(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRCUITD_MAX_ATTEMPTS", "2")
    from circuitd.settings import get_settings

    get_settings.cache_clear()
    try:
        job, _ = store.create_job("alice", SPEC, "cpu")
        assert store.claim(job.id, "h:1").action == "run"
        assert store.claim(job.id, "h:2", stale_after=0).action == "run"
        assert store.claim(job.id, "h:3", stale_after=0).action == "done"
        failed = store.get_job(job.id)
        assert failed.status == "failed" and "gave up after 2 attempts" in failed.error
        assert failed.error_code == "worker_lost"
    finally:
        get_settings.cache_clear()


def test_cancel_queued_running_and_finished(store: Store) -> None:
    queued, _ = store.create_job("alice", SPEC, "cpu")
    assert store.request_cancel(queued.id, "bob") is None
    assert store.request_cancel(queued.id, "alice").status == "cancelled"
    assert store.claim(queued.id, "w").action == "done"

    running, _ = store.create_job("alice", SPEC, "cpu")
    store.claim(running.id, "w")
    flagged = store.request_cancel(running.id, "alice")
    assert flagged.status == "running" and flagged.cancel_requested
    assert store.heartbeat(running.id, "w") is True
    assert store.mark_cancelled(running.id, "w")
    assert store.get_job(running.id).status == "cancelled"
    assert store.request_cancel(running.id).status == "cancelled"  # terminal: unchanged


def test_fail_and_graph_blob_round_trip(store: Store) -> None:
    job, _ = store.create_job("alice", SPEC, "cpu")
    store.claim(job.id, "w")
    assert store.fail(job.id, "w", "model: nope", "model")
    assert (store.get_job(job.id).error, store.get_job(job.id).error_code) == ("model: nope", "model")
    graph = {"directed": True, "links": [{"source": "input", "target": "logits", "score": 0.5}] * 500}
    store.save_graph(job.id, graph)
    assert store.load_graph(job.id) == graph
    assert store.load_graph("missing") is None


def test_api_keys_are_hashed_and_revocable(store: Store) -> None:
    key = store.create_key("ci", "team-a")
    assert key.startswith("cdk_") and store.owner_for_key(key) == "team-a"
    assert store.owner_for_key(key + "x") is None
    assert all(key not in (k.key_hash, k.name) for k in store.list_keys())
    with pytest.raises(CircuitdError, match="exists already"):
        store.create_key("ci")
    assert store.revoke_key("ci") and store.owner_for_key(key) is None
    assert not store.revoke_key("ci")


def test_finishing_a_job_deleted_while_it_ran_stores_nothing(store: Store) -> None:
    """The owner deleted the job mid-run: the worker's final write is refused cleanly, no orphan graph."""
    job, _ = store.create_job("alice", SPEC, "cpu")
    claim = store.claim(job.id, "w1")
    assert claim.action == "run"
    assert store.delete_job(job.id, "alice")
    assert store.finish(job.id, "w1", {"n_edges": 3}, {"links": [1, 2, 3]}) is False
    assert store.get_job(job.id) is None and store.load_graph(job.id) is None
