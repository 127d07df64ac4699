"""The store's tables: jobs, API keys and graph payloads, and the helpers their rows use. Imports no torch."""

import hashlib
import json
import math
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import JSON, Column, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})


class ErrorCode(StrEnum):
    """Why a job failed, as a stable code clients can branch on (the message is for people)."""

    invalid_spec = "invalid_spec"  # the spec, or an input it names, is not acceptable
    model = "model"  # the model (or its transcoders) is unknown, unreachable or refused
    task = "task"  # the task cannot be built or does not fit the model
    time_limit = "time_limit"
    out_of_memory = "out_of_memory"
    worker_lost = "worker_lost"  # the worker was lost on every attempt
    unserved = "unserved"  # no live worker serves the job's queue
    internal = "internal"  # a bug: the worker's log holds the traceback under the job id


def utcnow() -> datetime:
    return datetime.now(UTC)


class Job(SQLModel, table=True):
    __tablename__: ClassVar[str] = "jobs"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_owner_created", "owner", "created_at"),
        Index("ix_jobs_owner_status", "owner", "status"),  # the quota counts an owner's active jobs
    )

    id: str = Field(primary_key=True, max_length=32)
    owner: str = Field(index=True, max_length=128)
    status: str = Field(default=JobStatus.queued, index=True, max_length=16)
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    spec_hash: str = Field(max_length=64)
    queue: str = Field(max_length=64)
    progress: float = 0.0
    stage: str = Field(default="queued", max_length=200)
    created_at: datetime = Field(default_factory=utcnow)
    enqueued_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: float | None = None  # epoch seconds in database time, written by the job's worker
    worker: str | None = Field(default=None, max_length=200)  # that worker's id (store.workers)
    error: str | None = Field(default=None, sa_column=Column(Text))
    error_code: str | None = Field(default=None, max_length=32)  # an ErrorCode when failed
    # Database time a sweeper first saw the job queued (or requeued it), and first saw its queue
    # without a live worker: the ages the lost-message and unserved-queue rules measure.
    queued_since: float | None = None
    unserved_since: float | None = None
    summary: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    idempotency_key: str | None = Field(default=None, max_length=200)
    cancel_requested: bool = False
    attempts: int = 0


class ApiKey(SQLModel, table=True):
    __tablename__: ClassVar[str] = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=128)
    owner: str = Field(index=True, max_length=128)
    key_hash: str = Field(unique=True, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class WorkerRow(SQLModel, table=True):
    """A live worker's main process: registered at start, refreshed by its sweeper, removed at a
    clean shutdown. A row whose ``last_seen`` is older than ``stale_after_s`` is a lost worker."""

    __tablename__: ClassVar[str] = "workers"

    id: str = Field(primary_key=True, max_length=200)
    queues: str = Field(max_length=2000)  # comma-separated queue names
    started_at: float  # database time
    last_seen: float = Field(index=True)  # database time
    # Comma-separated ids of the jobs whose messages it has received and not finished: in flight, not lost.
    holding: str | None = Field(default=None, sa_column=Column(Text))

    @property
    def queue_names(self) -> list[str]:
        return [q for q in self.queues.split(",") if q]


class GraphBlob(SQLModel, table=True):
    __tablename__: ClassVar[str] = "graphs"

    job_id: str = Field(primary_key=True, foreign_key="jobs.id", ondelete="CASCADE", max_length=32)
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # zlib(node-link JSON, full graph)
    raw_bytes: int = 0
    n_edges: int = 0
    created_at: datetime = Field(default_factory=utcnow)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def finite(value: Any) -> Any:
    """NaN and infinities become None: the API must emit strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
