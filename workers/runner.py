"""Run one job: claim it in the store, call circuitd.discover, store the graph and the outcome.

Kept apart from Celery so it can be called in-process. The store decides whether this
delivery runs at all (see ``Store.claim``): a redelivered job that already succeeded is
not rerun, and one held by a live worker is left to it. A job from the API runs under the
service's rules (``circuitd.access.service_access``), spec validation included; what it
tells its owner when it fails is decided in ``workers.errors``.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError

from circuitd.access import service_access
from circuitd.progress import Cancelled
from circuitd.settings import get_settings
from circuitd.spec import JobSpec
from circuitd.store import ErrorCode, JobStatus, Store, get_store, worker_id
from graphs import to_node_link
from workers.errors import job_error

T = TypeVar("T")

log = logging.getLogger("circuitd.worker")

SUMMARY_KEYS = (
    "faithfulness", "n_edges", "n_edges_total", "metric_full", "metric_empty", "metric_circuit",
    "cpr", "cmd", "seconds", "n_prompts", "curve_level",
    # node- and neuron-level circuits
    "n_neurons", "n_neurons_total",
    # attribution graphs
    "n_nodes", "n_nodes_total", "replacement_score", "completeness_score", "top_logit", "backward_passes",
    "validation",
)


class Heartbeat:
    """A thread that marks the job alive and notices a cancel request or a takeover."""

    def __init__(self, store: Store, job_id: str, worker: str, interval: float):
        self.store, self.job_id, self.worker, self.interval = store, job_id, worker, interval
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        try:
            state = self.store.heartbeat(self.job_id, self.worker)
        except Exception:  # a database hiccup must not end the job; the next beat retries
            log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)
            return
        if state is None:
            self.lost.set()
        elif state:
            self.cancel.set()

    def should_stop(self) -> bool:
        return self.cancel.is_set() or self.lost.is_set()


class SoftDeadlinePassed(Exception):
    """The job's own clock passed the soft time limit.

    Celery's soft limit is one signal, raised wherever the job happens to be; code that
    must not end the job on a failure (the progress write, a heartbeat) can swallow it.
    The runner therefore also checks the limit itself between batches.
    """


def deadline_check(should_stop: Callable[[], bool], limit_s: float | None) -> Callable[[], bool]:
    """``should_stop`` that also raises ``SoftDeadlinePassed`` once ``limit_s`` has gone by."""
    if not limit_s:
        return should_stop
    deadline = time.monotonic() + limit_s

    def check() -> bool:
        if time.monotonic() > deadline:
            raise SoftDeadlinePassed(f"soft time limit of {limit_s:g} s passed")
        return should_stop()

    return check


def while_db_down(call: Callable[[], T], what: str) -> T:
    """``call()``, tried again while the database cannot be reached (locked, restarting), for up to
    ``stale_after_s``: past that the job counts as lost and another worker may hold it anyway."""
    deadline = time.monotonic() + get_settings().stale_after_s
    pause = 0.25
    while True:
        try:
            return call()
        except (OperationalError, InterfaceError):
            if time.monotonic() + pause > deadline:
                raise
            log.warning("%s: the database did not answer; trying again in %.2f s", what, pause, exc_info=True)
            time.sleep(pause)
            pause = min(2.0, pause * 2)


def free_memory() -> None:
    """Give back what a failed job held, so the next job on this worker starts clean."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # freeing is best effort
        log.debug("could not empty the CUDA cache", exc_info=True)


_threads_set = False


def _set_torch_threads() -> None:
    """Once per process: ``CIRCUITD_WORKER_TORCH_THREADS`` shares the cores between workers."""
    global _threads_set
    threads = get_settings().worker_torch_threads
    if threads and not _threads_set:
        import torch

        torch.set_num_threads(threads)
    _threads_set = True


def summary_of(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in SUMMARY_KEYS if k in metrics}


def execute(
    job_id: str,
    store: Store | None = None,
    worker: str | None = None,
    discover: Callable[..., Any] | None = None,
    soft_limit_errors: tuple[type[BaseException], ...] = (),
    soft_limit_s: float | None = None,
) -> str:
    """Run the job if this delivery should; returns what happened (``succeeded``, ``done``, ...)."""
    store = store or get_store()
    worker = worker or worker_id()
    try:
        with service_access():  # a spec from the API names only what the operator allowed
            outcome = _execute(job_id, store, worker, discover, soft_limit_errors, soft_limit_s)
    except soft_limit_errors:  # the signal landed outside the job's own handling: importing, claiming
        outcome = _fail_out_of_time(store, job_id, worker, time_limit_message(soft_limit_s))
    if outcome in ("succeeded", "failed", "cancelled"):
        log.info("job %s: ended %s on %s", job_id, outcome, worker)
    return outcome


def time_limit_message(soft_limit_s: float | None) -> str:
    limit = soft_limit_s or get_settings().job_soft_time_limit
    return f"time limit: the job ran longer than {limit:g} s (CIRCUITD_JOB_SOFT_TIME_LIMIT)"


def _fail_out_of_time(store: Store, job_id: str, worker: str, message: str) -> str:
    """Fail a job whose time ran out before it was claimed or while its result was stored."""
    job = store.get_job(job_id)
    if job is None or job.status not in (JobStatus.queued, JobStatus.running):
        return "done"
    if job.status == JobStatus.queued:
        claim = store.claim(job_id, worker)  # compare-and-set: another worker may have it by now
        if claim.action != "run":
            return claim.action
    return "failed" if store.fail(job_id, worker, message, ErrorCode.time_limit) else "lost"


def _execute(
    job_id: str,
    store: Store,
    worker: str,
    discover: Callable[..., Any] | None,
    soft_limit_errors: tuple[type[BaseException], ...],
    soft_limit_s: float | None,
) -> str:

    if discover is None:  # imported before the claim: the heartbeat must start right after it
        from circuitd.discover import discover

        _set_torch_threads()
    settings = get_settings()
    claim = while_db_down(lambda: store.claim(job_id, worker), f"job {job_id}: claim")
    if claim.action != "run":
        log.info("job %s: %s, nothing to run", job_id, claim.action)
        return claim.action
    assert claim.job is not None
    log.info("job %s: attempt %d on %s", job_id, claim.job.attempts, worker)

    def end(write: Callable[[], bool], outcome: str) -> str:
        """Write the job's end (retried while the database is down); "lost" if another worker holds it."""
        if while_db_down(write, f"job {job_id}: {outcome}"):
            return outcome
        log.warning("job %s: %s, but another worker holds it now; result dropped", job_id, outcome)
        return "lost"

    def failed(code: ErrorCode, message: str) -> str:
        return end(lambda: store.fail(job_id, worker, message, code), "failed")

    try:
        spec = JobSpec.model_validate(claim.job.spec)
    except Exception as exc:  # invalid under today's settings, or unreadable: the job fails, once
        code, message = job_error(exc, job_id, "cpu")
        if code == ErrorCode.internal:
            log.exception("job %s: its spec could not be checked", job_id)
        return failed(code, message)

    def progress(fraction: float, stage: str) -> None:
        try:
            store.update_progress(job_id, worker, fraction, stage)
        except soft_limit_errors:  # the time limit's signal may land here: it still ends the job
            raise
        except Exception:  # progress is advisory
            log.warning("progress of job %s not written", job_id, exc_info=True)

    with Heartbeat(store, job_id, worker, settings.heartbeat_s) as beat:
        beat.beat()  # a cancel that came in while the job was being claimed stops it at once
        try:
            should_stop = deadline_check(beat.should_stop, soft_limit_s)
            result = discover(spec, progress=progress, should_stop=should_stop)
            graph = to_node_link(result.full_graph)
            summary = summary_of(result.metrics)
        except Cancelled:
            if beat.lost.is_set():
                return "lost"
            return end(lambda: store.mark_cancelled(job_id, worker), "cancelled")
        except (*soft_limit_errors, SoftDeadlinePassed):
            return failed(ErrorCode.time_limit, time_limit_message(soft_limit_s))
        except Exception as exc:
            code, message = job_error(exc, job_id, spec.device)
            if code == ErrorCode.internal:
                log.exception("job %s failed: %s", job_id, message)
            else:
                log.warning("job %s failed (%s): %s", job_id, code, " ".join(str(exc).split()))
            if code == ErrorCode.out_of_memory:
                free_memory()
            return failed(code, message)
        return end(lambda: store.finish(job_id, worker, summary, graph), "succeeded")  # beats on meanwhile
