"""``/v1/jobs``: submit, list, read, cancel. A job is created in the store, then sent by task name."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status

from api import telemetry
from api.deps import JobDep, OwnerDep, StoreDep, send_job
from api.schemas import JobOut, JobPage
from circuitd.spec import JobSpec
from circuitd.store import TERMINAL, IdempotencyConflict, JobStatus, queue_for

log = logging.getLogger("circuitd.api")
router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
def submit(
    spec: JobSpec,
    owner: OwnerDep,
    st: StoreDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobOut:
    """Queue a discovery job. The same Idempotency-Key (per owner) returns the same job."""
    return enqueue(spec, owner, st, response, idempotency_key)


def enqueue(
    spec: JobSpec, owner: str, st: StoreDep, response: Response, idempotency_key: str | None
) -> JobOut:
    """Create the job and send it to its queue (or replay the idempotent one)."""
    data = spec.model_dump(mode="json")
    try:
        job, created = st.create_job(owner, data, queue_for(spec.device), idempotency_key)
    except IdempotencyConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    if created:
        try:
            send_job(job)
        except Exception as exc:
            log.warning("could not enqueue job %s", job.id, exc_info=True)
            st.delete_job(job.id)
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, f"broker unavailable, job not created: {exc}"
            ) from exc
        telemetry.submitted.inc()
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.of(job)


@router.get("", response_model=JobPage)
def list_jobs(
    owner: OwnerDep,
    st: StoreDep,
    request: Request,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobPage:
    """The caller's jobs, newest first."""
    jobs, total = st.list_jobs(owner, status_.value if status_ else None, limit, offset)
    nxt = None
    if offset + len(jobs) < total:
        nxt = str(request.url.include_query_params(offset=offset + len(jobs), limit=limit))
    return JobPage(items=[JobOut.of(j) for j in jobs], total=total, limit=limit, offset=offset, next=nxt)


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job: JobDep) -> JobOut:
    """Async: the job was read by the dependency, so this hop needs no thread."""
    return JobOut.of(job)


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
def cancel(job: JobDep, owner: OwnerDep, st: StoreDep) -> JobOut:
    """A queued job is cancelled at once; a running one stops at its next check (seconds)."""
    if job.status in TERMINAL:
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job.id} is already {job.status}")
    after = st.request_cancel(job.id, owner)
    assert after is not None
    return JobOut.of(after)
