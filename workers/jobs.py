"""The one task, ``circuitd.run_job(job_id)``, and the worker's housekeeping.

Each worker's main process sweeps the store now and then: jobs whose worker was lost
(no heartbeat) go back to the queue, and queued jobs whose message may be gone are sent
again. The store's compare-and-set claim makes a duplicate message harmless.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import signals
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from circuitd.settings import get_settings
from circuitd.store import TASK_NAME, get_store
from workers.app import app
from workers.runner import execute

log = logging.getLogger("circuitd.worker")


@app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self: Any, job_id: str) -> str:
    """Run a job by id; everything else (spec, state, result) lives in the store."""
    _, soft = self.request.timelimit or (None, None)  # a message may carry its own limits
    return execute(
        job_id, soft_limit_errors=(SoftTimeLimitExceeded,), soft_limit_s=soft or app.conf.task_soft_time_limit
    )


@signals.task_failure.connect
def fail_on_hard_time_limit(
    sender: Any = None, exception: BaseException | None = None, args: Any = None, **_: Any
) -> None:
    """The pool child was killed past the hard limit: fail the job here, in the worker's main
    process, or the sweep would find a job whose process is gone and run it again."""
    if getattr(sender, "name", None) != TASK_NAME or not isinstance(exception, TimeLimitExceeded) or not args:
        return
    limit = exception.args[0] if exception.args else app.conf.task_time_limit
    get_store().fail(args[0], None, f"time limit: killed after {limit} s (CIRCUITD_JOB_TIME_LIMIT)")


def sweep_once() -> list[str]:
    """Re-send the jobs the store says were lost; returns their ids."""
    sent = []
    for job in get_store().sweep():
        app.send_task(TASK_NAME, args=[job.id], queue=job.queue)
        log.warning("job %s re-sent to %s (was %s on %s)", job.id, job.queue, job.status, job.worker)
        sent.append(job.id)
    return sent


class Sweeper(threading.Thread):
    def __init__(self, interval: float):
        super().__init__(name="circuitd-sweeper", daemon=True)
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                sweep_once()
            except Exception:  # the broker or database may be down for a while; try again later
                log.warning("sweep failed", exc_info=True)
            if self.stopped.wait(self.interval):
                return


_sweeper: Sweeper | None = None


@signals.worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    global _sweeper
    if _sweeper is None:
        _sweeper = Sweeper(get_settings().sweep_interval_s)
        _sweeper.start()


@signals.worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    if _sweeper is not None:
        _sweeper.stopped.set()


@signals.worker_process_init.connect
def _child_init(**_: Any) -> None:
    """A forked pool child must not share the parent's database connections."""
    get_store().engine.dispose(close=False)
