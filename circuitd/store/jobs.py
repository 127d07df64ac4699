"""The job state machine: every read and write of jobs, keys and graphs. Imports no torch.

The database is the source of truth for a job; broker messages only wake a worker up.
So every state change is a compare-and-set ``UPDATE ... WHERE`` that names the state it
expects: two workers that get the same message cannot both run the job, a worker that was
presumed dead cannot overwrite the result of the one that took over, and a lost message
is repaired by re-sending the job id (``take_for_resend``). Liveness (heartbeats, the
sweeper's ages) is measured on the database's clock, never a host's (``clock``). SQLite by
default (a file under ``data_dir``, WAL mode so the API and a worker can share it),
PostgreSQL via ``DATABASE_URL``.
"""

import json
import secrets
import threading
import time
import uuid
import zlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import delete, event, func, insert, or_, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlmodel import Session, SQLModel, create_engine, select

from circuitd.errors import CircuitdError
from circuitd.settings import get_settings
from circuitd.store.clock import DbClock
from circuitd.store.migrate import add_missing_columns
from circuitd.store.tables import (
    TERMINAL,
    ApiKey,
    ErrorCode,
    GraphBlob,
    Job,
    JobStatus,
    WorkerRow,
    finite,
    hash_key,
    spec_hash,
    utcnow,
)
from circuitd.store.workers import holder_is_dead

WORKER_ROW_TTL_S = 86400.0  # a crashed worker's row is kept this long (database time), then pruned


# Plain SQL, compiled once: the quota is counted on every submission (ix_jobs_owner_status serves it).
_COUNT_ACTIVE = text(
    "SELECT count(*) FROM jobs WHERE owner = :owner"
    f" AND status IN ('{JobStatus.queued}', '{JobStatus.running}')"
)


class IdempotencyConflict(CircuitdError):
    """The idempotency key was used before with a different spec."""


class QuotaExceeded(CircuitdError):
    """The owner has as many queued and running jobs as it may: no new job was created."""

    def __init__(self, active: int, limit: int):
        self.active, self.limit = active, limit
        super().__init__(f"jobs: {active} queued or running, at the limit of {limit} per owner")


@dataclass
class Claim:
    """What a worker should do with a delivered job id."""

    action: str  # "run", "done" (terminal: nothing to do), "busy" (a live worker holds it), "missing"
    job: Job | None = None


def _cancelled() -> dict[str, Any]:
    return {"status": JobStatus.cancelled, "stage": "cancelled", "finished_at": utcnow()}


def default_database_url() -> str:
    s = get_settings()
    if s.database_url:
        return s.database_url
    s.data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{s.data_dir / 'circuitd.db'}"


def make_engine(url: str) -> Engine:
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    busy_s = get_settings().db_busy_timeout_s
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_s})

    @event.listens_for(engine, "connect")
    def _pragmas(conn: Any, _record: Any) -> None:
        cur = conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_s * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


def check_liveness_settings(url: str | None = None) -> None:
    """On SQLite a write waits up to the busy timeout for a lock: a worker whose heartbeats wait
    that long must not look lost. Raises a one-line CircuitdError naming the settings."""
    s = get_settings()
    if not (url or default_database_url()).startswith("sqlite"):
        return
    if s.stale_after_s <= s.db_busy_timeout_s + 2 * s.heartbeat_s:
        raise CircuitdError(
            f"CIRCUITD_STALE_AFTER_S ({s.stale_after_s:g} s) must exceed CIRCUITD_DB_BUSY_TIMEOUT_S "
            f"({s.db_busy_timeout_s:g} s) plus two CIRCUITD_HEARTBEAT_S ({s.heartbeat_s:g} s) on SQLite, "
            "or a worker waiting for a lock would be taken for lost"
        )


class Store:
    """All reads and writes of jobs, keys and graphs. Thread-safe; one per process and URL."""

    def __init__(self, url: str | None = None, create: bool = True):
        self.url = url or default_database_url()
        self.engine = make_engine(self.url)
        self.clock = DbClock(self.engine)
        self._last_progress: dict[str, float] = {}
        self._lock = threading.Lock()
        if create:
            self.create_tables()

    def create_tables(self) -> None:
        for attempt in range(3):  # API and workers may start together: a racing CREATE TABLE fails once
            try:
                SQLModel.metadata.create_all(self.engine)
                add_missing_columns(self.engine, SQLModel.metadata)  # a store made by an older version
                return
            except (IntegrityError, ProgrammingError, OperationalError):
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def _update(self, job_id: str, where: list[Any], **values: Any) -> bool:
        """Compare-and-set: apply ``values`` if the job still matches ``where``."""
        with self.session() as s:
            res = s.exec(update(Job).where(Job.id == job_id, *where).values(**values))  # type: ignore[call-overload]
            s.commit()
            return res.rowcount == 1

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def db_now(self) -> float:
        """The database's time (epoch seconds): the clock liveness is measured on."""
        return self.clock.now()

    def _stale(self, stale_after: float) -> Any:
        """SQL: the job has no heartbeat younger than ``stale_after`` s of database time."""
        return or_(Job.heartbeat_at.is_(None), Job.heartbeat_at <= self.clock.sql - stale_after)  # type: ignore[union-attr,operator]  # pyright: ignore[reportOptionalMemberAccess,reportOptionalOperand]

    # --- jobs: the API side ---------------------------------------------------------------

    def create_job(
        self,
        owner: str,
        spec: dict[str, Any],
        queue: str,
        idempotency_key: str | None = None,
        max_active: int | None = None,
    ) -> tuple[Job, bool]:
        """The new job, or the one created before with the same idempotency key; ``(job, created)``.

        With ``max_active``, the owner's queued and running jobs are counted in the transaction
        that inserts the job (QuotaExceeded at the limit), so concurrent submissions cannot pass
        it together. A replay of an idempotent submission is never refused.
        """
        h = spec_hash(spec)
        if idempotency_key is not None:
            existing = self._by_idempotency_key(owner, idempotency_key)
            if existing is not None:
                return self._replay(existing, h), False
        job = Job(
            id=uuid.uuid4().hex, owner=owner, spec=spec, spec_hash=h, queue=queue,
            idempotency_key=idempotency_key,
        )
        try:
            with self.session() as s:
                if max_active is not None:
                    self._check_quota(s, owner, max_active)
                s.add(job)
                s.commit()
        except IntegrityError:
            existing = self._by_idempotency_key(owner, idempotency_key) if idempotency_key else None
            if existing is None:
                raise
            return self._replay(existing, h), False
        return job, True

    @staticmethod
    def _check_quota(s: Session, owner: str, max_active: int) -> None:
        """Count the owner's active jobs under a lock that serializes submissions (SQLite: the
        database's write lock, taken first; PostgreSQL: an advisory lock on the owner)."""
        dialect = s.get_bind().dialect.name
        if dialect == "sqlite":
            s.connection().exec_driver_sql("BEGIN IMMEDIATE")
        elif dialect == "postgresql":
            s.exec(select(func.pg_advisory_xact_lock(func.hashtext(owner))))
        active = int(s.connection().execute(_COUNT_ACTIVE, {"owner": owner}).scalar_one())
        if active >= max_active:
            raise QuotaExceeded(active, max_active)

    @staticmethod
    def _replay(job: Job, h: str) -> Job:
        if job.spec_hash != h:
            raise IdempotencyConflict("Idempotency-Key: already used for a different spec")
        return job

    def _by_idempotency_key(self, owner: str, key: str) -> Job | None:
        with self.session() as s:
            return s.exec(select(Job).where(Job.owner == owner, Job.idempotency_key == key)).first()

    def delete_job(self, job_id: str, owner: str | None = None) -> bool:
        """Remove the job and its graph (another owner's job is left: False, as for none).

        Used to undo a job that could not be enqueued and by ``DELETE /v1/jobs/{id}``. A worker
        still running the job loses it: its heartbeat finds no row and it stops, and its final
        compare-and-set write matches nothing.
        """
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None or (owner is not None and job.owner != owner):
                return False
            blob = s.get(GraphBlob, job_id)
            if blob is not None:
                s.delete(blob)
                s.flush()  # the graph first: its foreign key names the job
            s.delete(job)
            s.commit()
            return True

    def get_job(self, job_id: str, owner: str | None = None) -> Job | None:
        """The job; None when it does not exist or belongs to another owner."""
        with self.session() as s:
            job = s.get(Job, job_id)
        if job is None or (owner is not None and job.owner != owner):
            return None
        return job

    def list_jobs(
        self, owner: str | None, status: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[Job], int]:
        """A page of jobs, newest first, and the total that match."""
        with self.session() as s:
            q = select(Job)
            c = select(func.count()).select_from(Job)
            if owner is not None:
                q, c = q.where(Job.owner == owner), c.where(Job.owner == owner)
            if status is not None:
                q, c = q.where(Job.status == status), c.where(Job.status == status)
            q = q.order_by(Job.created_at.desc(), Job.id).offset(offset).limit(limit)  # type: ignore[attr-defined]
            return list(s.exec(q).all()), int(s.exec(c).one())

    def count_by_status(self) -> dict[str, int]:
        with self.session() as s:
            rows = s.exec(select(Job.status, func.count()).group_by(Job.status)).all()
        counts = {st.value: 0 for st in JobStatus}
        counts.update({st: int(n) for st, n in rows})
        return counts

    def request_cancel(self, job_id: str, owner: str | None = None) -> Job | None:
        """A queued job is cancelled at once; a running one is flagged and its worker stops it."""
        for _ in range(5):
            job = self.get_job(job_id, owner)
            if job is None or job.status in TERMINAL:
                return job
            if job.status == JobStatus.queued:
                done = self._update(
                    job_id, [Job.status == JobStatus.queued], status=JobStatus.cancelled,
                    cancel_requested=True, finished_at=utcnow(), stage="cancelled",
                )
            else:
                done = self._update(job_id, [Job.status == JobStatus.running], cancel_requested=True)
            if done:
                return self.get_job(job_id)
        return self.get_job(job_id)

    # --- jobs: the worker side ------------------------------------------------------------

    def claim(self, job_id: str, worker: str, stale_after: float | None = None) -> Claim:
        """Take the job for ``worker`` if it is queued, or running on a worker that is gone."""
        s = get_settings()
        stale_after = s.stale_after_s if stale_after is None else stale_after
        for _ in range(10):
            job = self.get_job(job_id)
            if job is None:
                return Claim("missing")
            if job.status in TERMINAL:
                return Claim("done", job)
            expected = [Job.status == job.status, Job.attempts == job.attempts]
            if job.status == JobStatus.running and job.worker != worker and not holder_is_dead(job.worker):
                if job.heartbeat_at is not None and self.db_now() - job.heartbeat_at < stale_after:
                    return Claim("busy", job)
                expected.append(self._stale(stale_after))  # a beat since the read keeps it its holder's
            if job.cancel_requested:
                self._update(job_id, expected, **_cancelled())
                continue
            if job.attempts >= s.max_attempts:
                self._update(
                    job_id, expected, status=JobStatus.failed, finished_at=utcnow(),
                    error_code=ErrorCode.worker_lost,
                    error=f"gave up after {job.attempts} attempts: the worker was lost each time",
                )
                continue
            if self._update(
                job_id, expected, status=JobStatus.running, worker=worker, heartbeat_at=self.clock.sql,
                attempts=job.attempts + 1, stage="starting", started_at=job.started_at or utcnow(),
            ):
                return Claim("run", self.get_job(job_id))
        return Claim("busy", self.get_job(job_id))

    def heartbeat(self, job_id: str, worker: str) -> bool | None:
        """Mark the job alive; returns whether a cancel was requested, None if the job is no longer ours."""
        with self.session() as s:
            res = s.exec(
                update(Job)  # type: ignore[call-overload]
                .where(Job.id == job_id, Job.worker == worker, Job.status == JobStatus.running)  # pyright: ignore[reportArgumentType] -- sqlmodel types column comparisons as bool
                .values(heartbeat_at=self.clock.sql)
            )
            s.commit()
            if res.rowcount != 1:
                return None
            return bool(s.exec(select(Job.cancel_requested).where(Job.id == job_id)).one())

    def update_progress(
        self, job_id: str, worker: str, fraction: float, stage: str, force: bool = False
    ) -> bool:
        """Write progress at most every ``progress_interval_s`` per job (always when forced or at 1.0)."""
        now = time.monotonic()
        with self._lock:
            last = self._last_progress.get(job_id, 0.0)
            if not force and fraction < 1.0 and now - last < get_settings().progress_interval_s:
                return False
            self._last_progress[job_id] = now
        return self._update(
            job_id, [Job.worker == worker, Job.status == JobStatus.running],
            progress=max(0.0, min(1.0, float(fraction))), stage=stage[:200],
        )

    def finish(
        self, job_id: str, worker: str, summary: dict[str, Any], graph: dict[str, Any] | None = None
    ) -> bool:
        """Mark the job succeeded and store its graph in one transaction, if ``worker`` still holds
        it: the compare-and-set comes first, so a job deleted meanwhile gets no orphan graph."""
        with self.session() as s:
            res = s.exec(
                update(Job)  # type: ignore[call-overload]
                .where(Job.id == job_id, Job.worker == worker, Job.status == JobStatus.running)  # pyright: ignore[reportArgumentType] -- sqlmodel types column comparisons as bool
                .values(
                    status=JobStatus.succeeded, progress=1.0, stage="done", finished_at=utcnow(),
                    summary=finite(summary), error=None, error_code=None,
                )
            )
            if res.rowcount != 1:
                s.rollback()
                return False
            if graph is not None:
                self._put_graph(s, job_id, graph)
            s.commit()
        self._forget(job_id)
        return True

    def fail(self, job_id: str, worker: str | None, error: str, code: str = ErrorCode.internal) -> bool:
        """Mark the job failed with a one-line reason and its ``ErrorCode`` (``worker`` None: any holder)."""
        where = [Job.status.in_([JobStatus.queued, JobStatus.running])]  # type: ignore[attr-defined]
        if worker is not None:
            where.append(Job.worker == worker)
        self._forget(job_id)
        return self._update(
            job_id, where, status=JobStatus.failed, error=error[:4000], error_code=code, finished_at=utcnow()
        )

    def mark_cancelled(self, job_id: str, worker: str) -> bool:
        self._forget(job_id)
        return self._update(
            job_id, [Job.worker == worker, Job.status == JobStatus.running],
            status=JobStatus.cancelled, stage="cancelled", finished_at=utcnow(),
        )

    def _forget(self, job_id: str) -> None:
        with self._lock:
            self._last_progress.pop(job_id, None)

    def worker_lost(self, job: Job, stale_after: float | None = None) -> bool:
        """A running job whose heartbeat is ``stale_after`` old in (estimated) database time: its
        worker is gone and a sweeper will requeue it. No query on most calls (``DbClock.estimate``)."""
        if job.status != JobStatus.running:
            return False
        stale_after = get_settings().stale_after_s if stale_after is None else stale_after
        return job.heartbeat_at is None or self.clock.estimate() - job.heartbeat_at >= stale_after

    # --- the sweeper: lost workers, lost messages, unserved queues, retention -------------

    def requeue_lost(self, stale_after: float | None = None) -> list[Job]:
        """Running jobs whose worker is gone (no heartbeat for ``stale_after`` s of database time, or
        its process is gone), put back in the queue: their messages must be sent again.

        Each reset is a compare-and-set that also asks the heartbeat to be stale still, so a
        worker that beats in between keeps its job, and of several sweepers only one re-sends it.
        """
        stale_after = get_settings().stale_after_s if stale_after is None else stale_after
        with self.session() as sess:
            running = sess.exec(select(Job).where(Job.status == JobStatus.running)).all()
        now = self.db_now()
        out: list[Job] = []
        for job in running:
            stale = job.heartbeat_at is None or now - job.heartbeat_at >= stale_after
            dead = holder_is_dead(job.worker)
            if not (stale or dead):
                continue
            cond = [Job.status == JobStatus.running, Job.attempts == job.attempts, Job.worker == job.worker]
            if not dead:
                cond.append(self._stale(stale_after))
            if job.cancel_requested:
                self._update(job.id, cond, **_cancelled())
                continue
            why = "its process is gone"
            if stale:
                why = f"no heartbeat for {now - (job.heartbeat_at or 0.0):.1f} s"
            if self._update(
                job.id, cond, status=JobStatus.queued, worker=None, enqueued_at=utcnow(),
                queued_since=self.clock.sql, unserved_since=None,
                stage=f"requeued: worker {job.worker} was lost ({why})",
            ):
                out.append(job)
        return out

    def stamp_queued(self, served: Iterable[str]) -> None:
        """Stamp queued jobs in database time: ``queued_since`` when first seen queued, and
        ``unserved_since`` while their queue is not in ``served`` (cleared once it is again)."""
        served = list(served)
        queued = Job.status == JobStatus.queued
        with self.session() as s:
            for stmt in (
                update(Job).where(queued, Job.queued_since.is_(None)).values(queued_since=self.clock.sql),  # type: ignore[union-attr]  # pyright: ignore[reportOptionalMemberAccess]
                update(Job).where(queued, Job.queue.in_(served), Job.unserved_since.is_not(None))  # type: ignore[attr-defined,union-attr]  # pyright: ignore[reportAttributeAccessIssue,reportOptionalMemberAccess]
                .values(unserved_since=None),
                update(Job).where(queued, Job.queue.not_in(served), Job.unserved_since.is_(None))  # type: ignore[attr-defined,union-attr]  # pyright: ignore[reportAttributeAccessIssue,reportOptionalMemberAccess]
                .values(unserved_since=self.clock.sql),
            ):
                s.exec(stmt)  # type: ignore[call-overload]
            s.commit()

    def fail_unserved(self, unserved_after: float | None = None) -> list[Job]:
        """Fail the queued jobs whose queue has had no live worker for ``unserved_after`` s
        (``unserved_since``, stamped by ``stamp_queued``); returns them."""
        unserved_after = get_settings().unserved_after_s if unserved_after is None else unserved_after
        due = [Job.status == JobStatus.queued, Job.unserved_since <= self.clock.sql - unserved_after]  # type: ignore[operator]  # pyright: ignore[reportOptionalOperand]
        with self.session() as s:
            jobs = s.exec(select(Job).where(*due)).all()
        return [
            job for job in jobs
            if self._update(
                job.id, due, status=JobStatus.failed, finished_at=utcnow(), error_code=ErrorCode.unserved,
                error=f"no worker serves queue '{job.queue}': none was live for {unserved_after:g} s "
                "(CIRCUITD_UNSERVED_AFTER_S)",
            )
        ]

    def queued_counts(self, exclude: Collection[str] = ()) -> dict[str, int]:
        """Queued jobs per queue, but those in ``exclude`` (held by a worker): what the broker's
        queues should hold at least."""
        with self.session() as s:
            q = select(Job.queue, func.count()).where(Job.status == JobStatus.queued, Job.id.not_in(exclude))  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
            q = q.group_by(Job.queue)
            rows = s.exec(q).all()
        return {q: int(n) for q, n in rows}

    def take_for_resend(
        self, queue: str, limit: int, requeue_after: float | None = None, exclude: Collection[str] = ()
    ) -> list[Job]:
        """Up to ``limit`` of the queue's jobs queued longest (``requeue_after`` s at least) but those
        in ``exclude`` (held by a worker), re-stamped to the back of the line; the caller sends their
        messages again.

        The caller decides how many messages may be lost; taking the oldest and re-stamping them
        makes repeated rounds reach every queued job, and a compare-and-set on the stamp gives each
        job to one of several sweepers.
        """
        requeue_after = get_settings().requeue_after_s if requeue_after is None else requeue_after
        if limit <= 0:
            return []
        with self.session() as s:
            jobs = s.exec(
                select(Job)
                .where(Job.status == JobStatus.queued, Job.queue == queue, Job.id.not_in(exclude),  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
                       Job.queued_since <= self.clock.sql - requeue_after)  # type: ignore[operator]  # pyright: ignore[reportOptionalOperand]
                # database time can tie within its resolution; the send time breaks the tie in
                # the order the jobs were sent, so a re-sent batch keeps its order at the back
                .order_by(Job.queued_since, Job.enqueued_at, Job.id)  # type: ignore[arg-type]
                .limit(limit)
            ).all()
        return [
            job for job in jobs
            if self._update(job.id, [Job.status == JobStatus.queued, Job.queued_since == job.queued_since],
                            queued_since=self.clock.sql, enqueued_at=utcnow())
        ]

    def purge_finished(self, retention_days: float | None = None, batch: int = 500) -> int:
        """Delete finished jobs, and their graphs, that ended over ``retention_days`` ago (database
        time; None: the setting, unset keeps everything); returns how many."""
        days = get_settings().retention_days if retention_days is None else retention_days
        if days is None:
            return 0
        cutoff = datetime.fromtimestamp(self.db_now() - days * 86400.0, UTC)
        old = [Job.status.in_(TERMINAL), Job.finished_at < cutoff]  # type: ignore[attr-defined,operator]  # pyright: ignore[reportAttributeAccessIssue,reportOptionalOperand]
        total = 0
        while True:
            with self.session() as s:
                ids = list(s.exec(select(Job.id).where(*old).limit(batch)).all())
                if not ids:
                    return total
                s.exec(delete(GraphBlob).where(GraphBlob.job_id.in_(ids)))  # type: ignore[call-overload,attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
                s.exec(delete(Job).where(Job.id.in_(ids), *old))  # type: ignore[call-overload,attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
                s.commit()
            total += len(ids)

    # --- workers --------------------------------------------------------------------------

    def register_worker(self, worker: str, queues: Iterable[str], holding: Iterable[str] = ()) -> None:
        """Insert or refresh the worker's row: it is alive now (database time), serves ``queues`` and
        holds the messages of the jobs ``holding``."""
        values = {
            "queues": ",".join(sorted(set(queues))), "holding": ",".join(holding), "last_seen": self.clock.sql
        }
        with self.session() as s:
            res = s.exec(update(WorkerRow).where(WorkerRow.id == worker).values(**values))  # type: ignore[call-overload]  # pyright: ignore[reportArgumentType]
            if res.rowcount == 0:
                s.exec(insert(WorkerRow).values(id=worker, started_at=self.clock.sql, **values))  # type: ignore[call-overload]
            s.commit()

    def unregister_worker(self, worker: str) -> None:
        with self.session() as s:
            s.exec(delete(WorkerRow).where(WorkerRow.id == worker))  # type: ignore[call-overload]  # pyright: ignore[reportArgumentType]
            s.commit()

    def live_workers(self, stale_after: float | None = None) -> list[WorkerRow]:
        """Workers seen within ``stale_after`` s of database time."""
        stale_after = get_settings().stale_after_s if stale_after is None else stale_after
        with self.session() as s:
            q = select(WorkerRow).where(WorkerRow.last_seen > self.clock.sql - stale_after)
            return list(s.exec(q).all())

    def held_jobs(self, stale_after: float | None = None) -> set[str]:
        """Ids of the jobs whose messages live workers hold: in flight, whatever the broker counts."""
        return {j for w in self.live_workers(stale_after) for j in (w.holding or "").split(",") if j}

    def prune_workers(self, older_than: float = WORKER_ROW_TTL_S) -> int:
        """Forget the rows of workers not seen for ``older_than`` s (crashed: none removed them)."""
        with self.session() as s:
            res = s.exec(delete(WorkerRow).where(WorkerRow.last_seen < self.clock.sql - older_than))  # type: ignore[call-overload]  # pyright: ignore[reportArgumentType]
            s.commit()
            return int(res.rowcount)

    # --- graphs ---------------------------------------------------------------------------

    @staticmethod
    def _put_graph(s: Session, job_id: str, graph: dict[str, Any]) -> None:
        raw = json.dumps(finite(graph), separators=(",", ":")).encode()
        blob = s.get(GraphBlob, job_id) or GraphBlob(job_id=job_id, data=b"")
        blob.data = zlib.compress(raw, 6)
        blob.raw_bytes = len(raw)
        blob.n_edges = len(graph.get("links", []))
        blob.created_at = utcnow()
        s.add(blob)

    def save_graph(self, job_id: str, graph: dict[str, Any]) -> None:
        """Store a node-link graph (every scored edge) compressed."""
        with self.session() as s:
            self._put_graph(s, job_id, graph)
            s.commit()

    def load_graph_bytes(self, job_id: str) -> bytes | None:
        """The stored node-link JSON text, decompressed; None if there is none."""
        with self.session() as s:
            blob = s.get(GraphBlob, job_id)
        return None if blob is None else zlib.decompress(blob.data)

    def load_graph(self, job_id: str) -> dict[str, Any] | None:
        raw = self.load_graph_bytes(job_id)
        return None if raw is None else json.loads(raw)

    # --- API keys -------------------------------------------------------------------------

    def create_key(self, name: str, owner: str | None = None) -> str:
        """A new key for ``owner`` (default: the name); only its hash is stored, so show it once."""
        key = "cdk_" + secrets.token_urlsafe(32)
        try:
            with self.session() as s:
                s.add(ApiKey(name=name, owner=owner or name, key_hash=hash_key(key)))
                s.commit()
        except IntegrityError as exc:
            raise CircuitdError(f"keys: a key named '{name}' exists already") from exc
        return key

    def owner_for_key(self, key: str) -> str | None:
        with self.session() as s:
            row = s.exec(select(ApiKey.owner).where(ApiKey.key_hash == hash_key(key))).first()
        return row

    def list_keys(self) -> list[ApiKey]:
        with self.session() as s:
            return list(s.exec(select(ApiKey).order_by(ApiKey.created_at)).all())  # type: ignore[arg-type]

    def revoke_key(self, name: str) -> bool:
        with self.session() as s:
            key = s.exec(select(ApiKey).where(ApiKey.name == name)).first()
            if key is None:
                return False
            s.delete(key)
            s.commit()
            return True


@lru_cache(maxsize=8)
def _store(url: str) -> Store:
    return Store(url)


def get_store(url: str | None = None) -> Store:
    """The process's store for ``url`` (default: the settings' database)."""
    return _store(url or default_database_url())
