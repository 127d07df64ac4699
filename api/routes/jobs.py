"""``/v1/jobs``: submit, list, read, cancel, delete. A job is created in the store, then sent by task name."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status

from api import telemetry
from api.caches import graphs, views
from api.deps import JobDep, OwnerDep, StoreDep, send_job
from api.errors import ApiError
from api.fair_use import over_quota
from api.schemas import JobOut, JobPage
from circuitd.settings import get_settings
from circuitd.spec import JobSpec
from circuitd.store import TERMINAL, IdempotencyConflict, JobStatus, QuotaExceeded, queue_for

log = logging.getLogger("circuitd.api")
MAX_OFFSET = 10**9  # far past any real listing; bigger numbers do not fit the database's integers
router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
def submit(
    spec: JobSpec,
    owner: OwnerDep,
    st: StoreDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobOut:
    """Queue a discovery job. The same Idempotency-Key (per owner) returns the same job. An owner
    with ``CIRCUITD_MAX_ACTIVE_JOBS_PER_OWNER`` jobs queued or running is refused (429 ``quota``)."""
    return enqueue(spec, owner, st, response, idempotency_key)


def enqueue(
    spec: JobSpec, owner: str, st: StoreDep, response: Response, idempotency_key: str | None
) -> JobOut:
    """Create the job within the owner's quota and send it to its queue (or replay the idempotent one)."""
    data = spec.model_dump(mode="json")
    quota = get_settings().max_active_jobs_per_owner
    try:
        job, created = st.create_job(owner, data, queue_for(spec.device), idempotency_key, max_active=quota)
    except IdempotencyConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except QuotaExceeded as exc:
        raise over_quota(exc) from exc
    if created:
        try:
            send_job(job)
        except Exception as exc:
            log.warning("could not enqueue job %s", job.id, exc_info=True)  # the reason stays in the log
            st.delete_job(job.id)
            raise ApiError(
                status.HTTP_503_SERVICE_UNAVAILABLE, "broker unavailable: job not created, retry later",
                headers={"Retry-After": "5"},
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
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JobPage:
    """The caller's jobs, newest first; an inline task is shown by name and size (the job itself
    has the whole spec)."""
    jobs, total = st.list_jobs(owner, status_.value if status_ else None, limit, offset)
    nxt = None
    if offset + len(jobs) < total:
        nxt = str(request.url.include_query_params(offset=offset + len(jobs), limit=limit))
    items = [JobOut.of(j, st.worker_lost(j), brief=True) for j in jobs]
    return JobPage(items=items, total=total, limit=limit, offset=offset, next=nxt)


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job: JobDep, st: StoreDep) -> JobOut:
    """Async: the job was read by the dependency, so this hop needs no thread."""
    return JobOut.of(job, st.worker_lost(job))  # database time estimated: a query at most every 30 s


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
def cancel(job: JobDep, owner: OwnerDep, st: StoreDep) -> JobOut:
    """A queued job is cancelled at once; a running one stops at its next check (seconds)."""
    if job.status in TERMINAL:
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job.id} is already {job.status}")
    after = st.request_cancel(job.id, owner)
    if after is None:  # deleted meanwhile
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job.id} not found")
    return JobOut.of(after, st.worker_lost(after))


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def delete(job: JobDep, owner: OwnerDep, st: StoreDep) -> Response:
    """Remove the job and its graph; a queued or running job is cancelled first. A worker running
    it notices at its next heartbeat (seconds) that the job is gone and stops."""
    if job.status not in TERMINAL:
        st.request_cancel(job.id, owner)
    if not st.delete_job(job.id, owner):  # deleted meanwhile by another request
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job.id} not found")
    graphs.forget(job.id)
    views.forget(job.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
