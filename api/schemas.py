"""Response bodies. The request body of ``POST /v1/jobs`` is ``circuitd.spec.JobSpec`` itself."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast, overload

from pydantic import BaseModel

from circuitd.store import Job, JobStatus


@overload
def _utc(value: datetime) -> datetime: ...
@overload
def _utc(value: None) -> None: ...
def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _brief(spec: dict[str, Any]) -> dict[str, Any]:
    task: Any = spec.get("task")
    if not isinstance(task, dict):
        return spec
    inline = cast("dict[str, Any]", task)
    clean: Any = inline.get("clean")
    n = len(cast("list[Any]", clean)) if isinstance(clean, list) else None
    return {**spec, "task": {"name": inline.get("name", "custom"), "n_prompts": n}}


class JobOut(BaseModel):
    id: str
    status: JobStatus
    progress: float
    stage: str
    queue: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    error_code: str | None  # stable: invalid_spec, model, task, time_limit, out_of_memory, worker_lost, ...
    worker_lost: bool  # running, but its worker's heartbeat stopped: it will be requeued
    metrics: dict[str, Any] | None
    attempts: int
    cancel_requested: bool
    spec: dict[str, Any]
    links: dict[str, str]

    @classmethod
    def of(cls, job: Job, worker_lost: bool = False, brief: bool = False) -> JobOut:
        """``worker_lost``: from ``Store.worker_lost`` (the store knows the database's clock).
        ``brief`` (listings): an inline task shows as its name and size, so a page of jobs stays
        small however large their tasks; ``GET /v1/jobs/{id}`` has the whole spec."""
        base = f"/v1/jobs/{job.id}"
        return cls(
            id=job.id, status=JobStatus(job.status), progress=job.progress, stage=job.stage, queue=job.queue,
            created_at=_utc(job.created_at), started_at=_utc(job.started_at),
            finished_at=_utc(job.finished_at), error=job.error, error_code=job.error_code,
            worker_lost=worker_lost, metrics=job.summary, attempts=job.attempts,
            cancel_requested=job.cancel_requested, spec=_brief(job.spec) if brief else job.spec,
            links={"self": base, "graph": f"{base}/graph", "cancel": f"{base}/cancel"},
        )


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int
    next: str | None


class Problem(BaseModel):
    """An error: ``detail`` is one line that names the field when a field is at fault; ``code`` is
    a stable word to branch on (invalid, unauthorized, not_found, conflict, too_large, quota,
    rate_limited, unavailable, internal, ...)."""

    detail: str
    code: str
    errors: list[dict[str, Any]] | None = None
