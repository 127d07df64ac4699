"""The worker's housekeeping, in its main process every ``sweep_interval_s``.

Each round: refresh this worker's row (the workers table says who is alive and which queues
are served); requeue and re-send running jobs whose worker is gone; stamp queued jobs and
fail those whose queue has had no live worker for ``unserved_after_s``; re-send messages
that may be lost; now and then delete finished jobs past ``retention_days``.

A message may be lost (a broker restarted without its data, a worker killed after fetching
it) but must never be multiplied: a queue is short of messages when it holds fewer than it
has queued jobs that no live worker holds (each worker's row lists the jobs it received and
has not finished: their messages are in flight), and only a shortfall seen on two rounds in
a row is made up (one being fetched right now is no loss), with the jobs queued longest.
Duplicates are harmless (the store's claim runs a job once) but a backlog must not grow them
round after round.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError

from circuitd.settings import get_settings
from circuitd.store import TASK_NAME, Job, Store

log = logging.getLogger("circuitd.worker")

PURGE_EVERY_S = 600.0  # retention and old worker rows: a slow-moving concern, not every round


def broker_counts(app: Celery, queues: Iterable[str]) -> dict[str, int]:
    """Messages ready in each queue (fetched, unacknowledged ones not counted)."""
    out: dict[str, int] = {}
    with app.connection_for_read() as conn:
        channel: Any = conn.default_channel  # a transport's channel; kombu types it as the bare base
        for queue in queues:
            try:
                out[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
            except ChannelError:  # Redis keeps no empty queue: it does not exist, so it holds none
                out[queue] = 0
    return out


class Sweeper(threading.Thread):
    def __init__(
        self,
        app: Celery,
        store: Store,
        worker: str,
        queues: Iterable[str],
        interval: float,
        holding: Callable[[], Iterable[str]] = tuple,
    ):
        """``holding``: the ids of the jobs whose messages this worker received and has not finished."""
        super().__init__(name="circuitd-sweeper", daemon=True)
        self.app, self.store, self.worker, self.queues = app, store, worker, sorted(set(queues))
        self.holding = holding
        self.interval = interval
        self.stopped = threading.Event()
        self._short: dict[str, int] = {}  # each queue's shortfall of messages on the last round
        self._purged_at = float("-inf")

    def run(self) -> None:
        while True:
            self.sweep_once()
            if self.stopped.wait(self.interval):
                return

    def sweep_once(self) -> list[str]:
        """One round; returns the ids of the jobs whose message was sent again. Each step stands
        alone: a broker that is down must not keep the database's steps from running, nor the reverse."""
        sent: list[str] = []
        for step in (self._register, self._requeue_lost, self._queued, self._resend, self._purge):
            try:
                step(sent)
            except Exception:  # the broker or the database may be down for a while; next round
                log.warning("sweep: %s failed", step.__name__.strip("_"), exc_info=True)
        return sent

    def _send(self, job: Job, sent: list[str], why: str) -> None:
        self.app.send_task(TASK_NAME, args=[job.id], queue=job.queue)
        log.warning("job %s re-sent to %s (%s)", job.id, job.queue, why)
        sent.append(job.id)

    def _register(self, _sent: list[str]) -> None:
        self.store.register_worker(self.worker, self.queues, self.holding())

    def _requeue_lost(self, sent: list[str]) -> None:
        for job in self.store.requeue_lost():
            self._send(job, sent, f"its worker {job.worker} was lost")

    def _queued(self, _sent: list[str]) -> None:
        served = {q for w in self.store.live_workers() for q in w.queue_names} | set(self.queues)
        self.store.stamp_queued(served)
        for job in self.store.fail_unserved():
            log.warning("job %s failed: no live worker served queue %s", job.id, job.queue)

    def _resend(self, sent: list[str]) -> None:
        last, self._short = self._short, {}
        held = self.store.held_jobs()
        queued = self.store.queued_counts(exclude=held)
        ready = broker_counts(self.app, queued)
        short = {q: n - ready[q] for q, n in queued.items() if n > ready[q]}
        for queue, missing in short.items():
            for job in self.store.take_for_resend(queue, min(missing, last.get(queue, 0)), exclude=held):
                self._send(job, sent, "its message may be lost")
                short[queue] -= 1  # made up: the next round must see a shortfall twice again
        self._short = short

    def _purge(self, _sent: list[str]) -> None:
        if time.monotonic() - self._purged_at < PURGE_EVERY_S:
            return
        self._purged_at = time.monotonic()
        deleted = self.store.purge_finished()
        if deleted:
            log.info("deleted %d jobs finished over %g days ago", deleted, get_settings().retention_days or 0)
        self.store.prune_workers()

    def stop(self) -> None:
        """End the rounds and remove this worker's row: a clean shutdown is no lost worker."""
        self.stopped.set()
        self.join(timeout=10)
        try:
            self.store.unregister_worker(self.worker)
        except Exception:  # the row then ages out like a crashed worker's
            log.warning("could not remove worker %s from the store", self.worker, exc_info=True)
