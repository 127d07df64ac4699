"""The one task, ``circuitd.run_job(job_id)``, and the worker's life in the store.

At start the worker checks that its liveness settings agree (``check_liveness_settings``),
then its main process registers in the store and runs the ``Sweeper`` (workers/sweeper.py):
lost workers' jobs go back to the queue, lost messages are sent again, jobs no worker
serves fail, old jobs are deleted. The store's compare-and-set claim makes a duplicate
message harmless. A clean shutdown removes the worker's row.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import signals
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from circuitd.errors import CircuitdError
from circuitd.settings import get_settings
from circuitd.store import TASK_NAME, ErrorCode, check_liveness_settings, get_store, holder_is_dead, worker_id
from workers.app import app
from workers.runner import execute
from workers.sweeper import Sweeper

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
    store = get_store()
    job = store.get_job(args[0])
    if job is None or not holder_is_dead(job.worker):
        return  # taken over meanwhile by a live worker (a sweep saw the dead child first): its run now
    message = f"time limit: killed after {limit} s (CIRCUITD_JOB_TIME_LIMIT)"
    store.fail(job.id, job.worker, message, ErrorCode.time_limit)  # compare-and-set on the dead holder


@signals.worker_init.connect
def _check_settings(**_: Any) -> None:
    """Refuse to start with settings under which a live worker would be taken for lost."""
    try:
        check_liveness_settings()
    except CircuitdError as exc:
        print(f"circuitd worker: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _holding() -> list[str]:
    """The jobs whose messages this worker (its main process) received and has not finished."""
    from celery.worker import state

    for _ in range(3):
        try:
            requests = list(state.requests.values())
        except RuntimeError:  # changed while copied: the consumer runs in another thread
            continue
        return [str(r.args[0]) for r in requests if r.name == TASK_NAME and r.args]
    return []


_sweeper: Sweeper | None = None


@signals.worker_ready.connect
def _start_sweeper(sender: Any = None, **_: Any) -> None:
    global _sweeper
    if _sweeper is None:
        queues = list(app.amqp.queues.consume_from or app.amqp.queues)
        _sweeper = Sweeper(app, get_store(), worker_id(), queues, get_settings().sweep_interval_s, _holding)
        _sweeper.start()


@signals.worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    if _sweeper is not None:
        _sweeper.stop()


@signals.worker_process_init.connect
def _child_init(**_: Any) -> None:
    """A forked pool child must not share the parent's database connections."""
    get_store().engine.dispose(close=False)
