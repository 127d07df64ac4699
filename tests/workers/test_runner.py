"""``workers.runner.execute`` in-process on a real SQLite store: every way a job can end."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Any

import pytest
import torch
from celery.exceptions import SoftTimeLimitExceeded

from circuitd.progress import Cancelled
from circuitd.store import Store, worker_id
from circuitd.store.workers import namespace_tag
from tests.support.service import TINY
from workers.errors import is_out_of_memory
from workers.runner import execute


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'store.db'}")


def _job(store: Store, spec: dict[str, Any] | None = None) -> str:
    job, _ = store.create_job("alice", spec or TINY, "cpu")
    return job.id


def _raising(exc: BaseException):
    def discover(spec: Any, progress: Any = None, should_stop: Any = None) -> Any:
        progress(0.2, "scoring edges")
        raise exc

    return discover


def test_success_then_redelivery_is_not_rerun(store: Store) -> None:
    job_id = _job(store)
    assert execute(job_id, store, worker="w") == "succeeded"
    job = store.get_job(job_id)
    assert job.status == "succeeded" and job.summary["n_edges_total"] == 110 and "curve" not in job.summary
    assert len(store.load_graph(job_id)["links"]) == 110

    def must_not_run(*_: Any, **__: Any) -> Any:
        raise AssertionError("a job that succeeded was run again")

    assert execute(job_id, store, worker="w2", discover=must_not_run) == "done"
    assert store.get_job(job_id).attempts == 1


@pytest.mark.parametrize(
    "exc",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
        MemoryError(),
    ],
)
def test_out_of_memory_fails_the_job_not_the_worker(store: Store, exc: BaseException) -> None:
    assert is_out_of_memory(exc)
    job_id = _job(store)
    assert execute(job_id, store, worker="w", discover=_raising(exc)) == "failed"
    job = store.get_job(job_id)
    assert job.status == "failed" and job.error.startswith("out of memory on cpu")
    assert job.error_code == "out_of_memory"
    nxt = _job(store)  # the same process goes on to the next job
    assert execute(nxt, store, worker="w") == "succeeded"


def test_soft_time_limit_user_error_and_internal_error(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    a = _job(store)
    execute(a, store, worker="w", discover=_raising(SoftTimeLimitExceeded()),
            soft_limit_errors=(SoftTimeLimitExceeded,), soft_limit_s=5)
    assert store.get_job(a).error == "time limit: the job ran longer than 5 s (CIRCUITD_JOB_SOFT_TIME_LIMIT)"
    assert store.get_job(a).error_code == "time_limit"

    b = _job(store, TINY | {"model": "local:/nonexistent/model"})
    assert execute(b, store, worker="w") == "failed"
    assert store.get_job(b).error.startswith("model") and "internal" not in store.get_job(b).error
    assert store.get_job(b).error_code in ("model", "invalid_spec")

    c = _job(store)
    with caplog.at_level("ERROR", logger="circuitd.worker"):
        assert execute(c, store, worker="w", discover=_raising(KeyError("boom"))) == "failed"
    failed = store.get_job(c)
    assert failed.error == f"internal error (logged with job {c})" and failed.error_code == "internal"
    logged = [r for r in caplog.records if c in r.getMessage()]  # the traceback, under the job's id
    assert logged and logged[0].exc_info is not None and logged[0].exc_info[0] is KeyError

    d = _job(store, {"model": "random:tiny", "task": "random", "n_prompts": 0})  # limits changed since
    assert execute(d, store, worker="w") == "failed"
    assert store.get_job(d).error.startswith("n_prompts") and store.get_job(d).error_code == "invalid_spec"


def _slow(seconds: float):
    def discover(spec: Any, progress: Any = None, should_stop: Any = None) -> Any:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if should_stop():
                raise Cancelled("cancelled")
            progress(0.5, "working")
            time.sleep(0.02)
        raise AssertionError("should have been stopped")

    return discover


def test_cancel_while_running(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    monkeypatch.setenv("CIRCUITD_HEARTBEAT_S", "0.05")
    from circuitd.settings import get_settings

    get_settings.cache_clear()
    try:
        job_id = _job(store)
        threading.Timer(0.3, lambda: store.request_cancel(job_id)).start()
        assert execute(job_id, store, worker="w", discover=_slow(20)) == "cancelled"
        job = store.get_job(job_id)
        assert job.status == "cancelled" and job.progress == pytest.approx(0.5)
    finally:
        get_settings.cache_clear()


def test_a_worker_that_lost_its_job_drops_its_result(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    monkeypatch.setenv("CIRCUITD_HEARTBEAT_S", "0.05")
    from circuitd.settings import get_settings

    get_settings.cache_clear()
    try:
        job_id = _job(store)
        threading.Timer(0.3, lambda: store.claim(job_id, "other:1", stale_after=0)).start()
        assert execute(job_id, store, worker="w", discover=_slow(20)) == "lost"
        job = store.get_job(job_id)
        assert job.status == "running" and job.worker == "other:1" and job.attempts == 2
    finally:
        get_settings.cache_clear()


class _SignalInProgressWrite(Store):
    """A real store on which Celery's soft-limit signal lands during the progress write."""

    def update_progress(self, *args: Any, **kwargs: Any) -> Any:
        raise SoftTimeLimitExceeded()


class _SignalInFirstClaim(Store):
    """A real store on which the signal lands while the job is claimed (the delivery was slow to start)."""

    signalled = False

    def claim(self, *args: Any, **kwargs: Any) -> Any:
        if not self.signalled:
            self.signalled = True
            raise SoftTimeLimitExceeded()
        return super().claim(*args, **kwargs)


@pytest.mark.parametrize("store_class", [_SignalInProgressWrite, _SignalInFirstClaim])
def test_soft_time_limit_signal_anywhere_ends_the_job(tmp_path, store_class: type[Store]) -> None:
    store = store_class(f"sqlite:///{tmp_path / 'store.db'}")
    job_id = _job(store)
    assert execute(job_id, store, worker="w", discover=_slow(20),
                   soft_limit_errors=(SoftTimeLimitExceeded,), soft_limit_s=2) == "failed"
    job = store.get_job(job_id)
    assert job.status == "failed" and job.attempts == 1
    assert job.error == "time limit: the job ran longer than 2 s (CIRCUITD_JOB_SOFT_TIME_LIMIT)"
    assert execute(job_id, store, worker="w") == "done"


def test_soft_time_limit_holds_when_its_signal_was_swallowed(store: Store) -> None:
    """No signal at all (as if some library caught it): the runner's own clock ends the job."""
    job_id = _job(store)
    start = time.monotonic()
    assert execute(job_id, store, worker="w", discover=_slow(20),
                   soft_limit_errors=(SoftTimeLimitExceeded,), soft_limit_s=0.5) == "failed"
    assert 0.5 <= time.monotonic() - start < 5
    error = store.get_job(job_id).error
    assert error == "time limit: the job ran longer than 0.5 s (CIRCUITD_JOB_SOFT_TIME_LIMIT)"


def test_hard_time_limit_fails_the_job_in_the_main_process(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from celery.exceptions import TimeLimitExceeded

    from circuitd.settings import get_settings

    url = f"sqlite:///{tmp_path / 'hard.db'}"
    monkeypatch.setenv("CIRCUITD_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        from workers import jobs

        store = Store(url)
        child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                               capture_output=True, text=True, check=True)
        killed = f"{socket.gethostname()}:{child.stdout.strip()}:{namespace_tag()}.dead"  # a pool child, gone
        taken = _job(store)  # killed too, but a sweep gave it to a live worker before the signal came
        store.claim(taken, killed)
        store.claim(taken, worker_id(), stale_after=0)
        jobs.fail_on_hard_time_limit(sender=jobs.run_job, exception=TimeLimitExceeded(7), args=[taken])
        assert store.get_job(taken).status == "running", "the live worker's new run is left alone"

        job_id = _job(store)
        store.claim(job_id, killed)
        jobs.fail_on_hard_time_limit(sender=jobs.run_job, exception=TimeLimitExceeded(7), args=[job_id])
        job = store.get_job(job_id)
        assert job.status == "failed"
        assert job.error == "time limit: killed after 7 s (CIRCUITD_JOB_TIME_LIMIT)"
        assert store.claim(job_id, "h:2").action == "done"
    finally:
        get_settings.cache_clear()


def test_user_errors_show_no_server_paths_but_model_root_paths(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from circuitd.errors import ModelError, TaskError
    from circuitd.settings import get_settings

    monkeypatch.setenv("CIRCUITD_MODEL_ROOTS", "/srv/models, /data/shared")
    get_settings.cache_clear()
    try:
        cases = [
            (ValueError("cannot read /opt/circuitd/cache/x/weights.bin."), "cannot read weights.bin.",
             "invalid_spec"),
            (ModelError("model: no config.json in /srv/models/gpt/v1 (see https://hf.co/org/name)"),
             "model: no config.json in /srv/models/gpt/v1 (see https://hf.co/org/name)", "model"),
            (TaskError("task", "file '/home/ops/secret/prompts.txt' is empty"),
             "task: file 'prompts.txt' is empty", "task"),
            (ModelError("model: local:/srv/models/../../etc/passwd is outside the roots"),
             "model: local:passwd is outside the roots", "model"),
        ]
        for exc, message, code in cases:
            job_id = _job(store)
            assert execute(job_id, store, worker="w", discover=_raising(exc)) == "failed"
            job = store.get_job(job_id)
            assert (job.error, job.error_code) == (message, code)
    finally:
        get_settings.cache_clear()


def test_the_job_runs_under_the_service_rules(store: Store) -> None:
    from circuitd.access import full_access, has_full_access

    seen: list[bool] = []

    def discover(spec: Any, progress: Any = None, should_stop: Any = None) -> Any:
        seen.append(has_full_access())
        raise ValueError("stop here")

    with full_access():  # even a caller with full access runs a job from the API under the service's rules
        execute(_job(store), store, worker="w", discover=discover)
    assert seen == [False]


def test_a_result_outlives_a_short_database_outage(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The database is locked by another process's transaction when the result is written: the
    runner waits it out (within stale_after) rather than dropping a finished job's graph."""
    import sqlite3
    import threading

    from circuitd.discover import discover as real_discover
    from circuitd.settings import get_settings

    monkeypatch.setenv("CIRCUITD_DB_BUSY_TIMEOUT_S", "0.2")
    get_settings.cache_clear()
    path = tmp_path / "store.db"
    try:
        store = Store(f"sqlite:///{path}")
        job_id = _job(store)
        locked: list[float] = []

        def discover_then_lock(spec: Any, progress: Any = None, should_stop: Any = None) -> Any:
            result = real_discover(spec, progress=progress, should_stop=should_stop)
            other = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            other.execute("BEGIN EXCLUSIVE")
            locked.append(time.monotonic())
            threading.Timer(1.5, lambda: (other.execute("ROLLBACK"), other.close())).start()
            return result

        assert execute(job_id, store, worker="w", discover=discover_then_lock) == "succeeded"
        assert time.monotonic() - locked[0] >= 1.4  # it did wait for the lock
        assert store.get_job(job_id).status == "succeeded" and len(store.load_graph(job_id)["links"]) == 110
    finally:
        get_settings.cache_clear()
