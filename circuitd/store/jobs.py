"""The job state machine: every read and write of jobs, keys and graphs. Imports no torch.

The database is the source of truth for a job; broker messages only wake a worker up.
So every state change is a compare-and-set ``UPDATE ... WHERE`` that names the state it
expects: two workers that get the same message cannot both run the job, a worker that was
presumed dead cannot overwrite the result of the one that took over, and a lost message
is repaired by re-sending the job id (``sweep``). SQLite by default (a file under
``data_dir``, WAL mode so the API and a worker can share it), PostgreSQL via ``DATABASE_URL``.
"""

import json
import os
import secrets
import socket
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import event, func, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlmodel import Session, SQLModel, create_engine, select

from circuitd.errors import CircuitdError
from circuitd.settings import get_settings
from circuitd.store.tables import (
    TERMINAL,
    ApiKey,
    GraphBlob,
    Job,
    JobStatus,
    finite,
    hash_key,
    spec_hash,
    utcnow,
)


class IdempotencyConflict(CircuitdError):
    """The idempotency key was used before with a different spec."""


@dataclass
class Claim:
    """What a worker should do with a delivered job id."""

    action: str  # "run", "done" (terminal: nothing to do), "busy" (a live worker holds it), "missing"
    job: Job | None = None


def _cancelled() -> dict[str, Any]:
    return {"status": JobStatus.cancelled, "stage": "cancelled", "finished_at": utcnow()}


def _holder_is_dead(holder: str | None) -> bool:
    """True when the holder ran on this host and its process is gone (a killed pool child)."""
    if not holder:
        return True
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(conn: Any, _record: Any) -> None:
        cur = conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


class Store:
    """All reads and writes of jobs, keys and graphs. Thread-safe; one per process and URL."""

    def __init__(self, url: str | None = None, create: bool = True):
        self.url = url or default_database_url()
        self.engine = make_engine(self.url)
        self._last_progress: dict[str, float] = {}
        self._lock = threading.Lock()
        if create:
            self.create_tables()

    def create_tables(self) -> None:
        for attempt in range(3):  # API and workers may start together: a racing CREATE TABLE fails once
            try:
                SQLModel.metadata.create_all(self.engine)
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

    # --- jobs: the API side ---------------------------------------------------------------

    def create_job(
        self, owner: str, spec: dict[str, Any], queue: str, idempotency_key: str | None = None
    ) -> tuple[Job, bool]:
        """The new job, or the one created before with the same idempotency key; ``(job, created)``."""
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
                s.add(job)
                s.commit()
        except IntegrityError:
            existing = self._by_idempotency_key(owner, idempotency_key) if idempotency_key else None
            if existing is None:
                raise
            return self._replay(existing, h), False
        return job, True

    @staticmethod
    def _replay(job: Job, h: str) -> Job:
        if job.spec_hash != h:
            raise IdempotencyConflict("Idempotency-Key: already used for a different spec")
        return job

    def _by_idempotency_key(self, owner: str, key: str) -> Job | None:
        with self.session() as s:
            return s.exec(select(Job).where(Job.owner == owner, Job.idempotency_key == key)).first()

    def delete_job(self, job_id: str) -> None:
        """Undo a job that could not be enqueued, so that a retry may create it again."""
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is not None:
                s.delete(job)
                s.commit()

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
            now = time.time()
            held = job.status == JobStatus.running and job.worker != worker
            fresh = job.heartbeat_at is not None and now - job.heartbeat_at < stale_after
            if held and fresh and not _holder_is_dead(job.worker):
                return Claim("busy", job)
            expected = [Job.status == job.status, Job.attempts == job.attempts]
            if job.cancel_requested:
                self._update(job_id, expected, **_cancelled())
                continue
            if job.attempts >= s.max_attempts:
                self._update(
                    job_id, expected, status=JobStatus.failed, finished_at=utcnow(),
                    error=f"gave up after {job.attempts} attempts: the worker was lost each time",
                )
                continue
            if self._update(
                job_id, expected, status=JobStatus.running, worker=worker, heartbeat_at=now,
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
                .values(heartbeat_at=time.time())
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
        """Store the graph and mark the job succeeded in one transaction, if ``worker`` still holds it."""
        with self.session() as s:
            if graph is not None:
                self._put_graph(s, job_id, graph)
            res = s.exec(
                update(Job)  # type: ignore[call-overload]
                .where(Job.id == job_id, Job.worker == worker, Job.status == JobStatus.running)  # pyright: ignore[reportArgumentType] -- sqlmodel types column comparisons as bool
                .values(
                    status=JobStatus.succeeded, progress=1.0, stage="done", finished_at=utcnow(),
                    summary=finite(summary), error=None,
                )
            )
            if res.rowcount != 1:
                s.rollback()
                return False
            s.commit()
        self._forget(job_id)
        return True

    def fail(self, job_id: str, worker: str | None, error: str) -> bool:
        """Mark the job failed with a one-line reason (``worker`` None: whoever holds it)."""
        where = [Job.status.in_([JobStatus.queued, JobStatus.running])]  # type: ignore[attr-defined]
        if worker is not None:
            where.append(Job.worker == worker)
        self._forget(job_id)
        return self._update(job_id, where, status=JobStatus.failed, error=error[:4000], finished_at=utcnow())

    def mark_cancelled(self, job_id: str, worker: str) -> bool:
        self._forget(job_id)
        return self._update(
            job_id, [Job.worker == worker, Job.status == JobStatus.running],
            status=JobStatus.cancelled, stage="cancelled", finished_at=utcnow(),
        )

    def _forget(self, job_id: str) -> None:
        with self._lock:
            self._last_progress.pop(job_id, None)

    def sweep(self, stale_after: float | None = None, requeue_after: float | None = None) -> list[Job]:
        """Jobs whose message must be sent again: running on a lost worker, or queued too long.

        Each is reset (running -> queued) or re-stamped by a compare-and-set, so when several
        workers sweep at once only one re-sends a given job.
        """
        s = get_settings()
        stale_after = s.stale_after_s if stale_after is None else stale_after
        requeue_after = s.requeue_after_s if requeue_after is None else requeue_after
        now = time.time()
        out: list[Job] = []
        with self.session() as sess:
            running = sess.exec(select(Job).where(Job.status == JobStatus.running)).all()
            cutoff = datetime.fromtimestamp(now - requeue_after, UTC)
            queued = sess.exec(
                select(Job).where(Job.status == JobStatus.queued, Job.enqueued_at < cutoff)
            ).all()
        for job in running:
            stale = job.heartbeat_at is None or now - job.heartbeat_at >= stale_after
            if not (stale or _holder_is_dead(job.worker)):
                continue
            cond = [Job.status == JobStatus.running, Job.attempts == job.attempts, Job.worker == job.worker]
            if job.cancel_requested:
                self._update(job.id, cond, **_cancelled())
                continue
            why = "its process is gone"
            if stale:
                why = f"no heartbeat for {now - (job.heartbeat_at or 0.0):.1f} s"
            if self._update(
                job.id, cond, status=JobStatus.queued, worker=None, enqueued_at=utcnow(),
                stage=f"requeued: worker {job.worker} was lost ({why})",
            ):
                out.append(job)
        for job in queued:
            if self._update(job.id, [Job.status == JobStatus.queued, Job.enqueued_at == job.enqueued_at],
                            enqueued_at=utcnow()):
                out.append(job)
        return out

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
