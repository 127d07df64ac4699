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


def utcnow() -> datetime:
    return datetime.now(UTC)


class Job(SQLModel, table=True):
    __tablename__: ClassVar[str] = "jobs"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_owner_created", "owner", "created_at"),
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
    heartbeat_at: float | None = None  # epoch seconds, written by the worker that holds the job
    worker: str | None = Field(default=None, max_length=200)  # "hostname:pid" of that worker
    error: str | None = Field(default=None, sa_column=Column(Text))
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
