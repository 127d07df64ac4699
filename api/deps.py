"""What routes depend on: the store, the caller's identity (rate limited), the task sender."""

from __future__ import annotations

import threading
import time
from functools import lru_cache
from typing import Annotated

from celery import Celery
from fastapi import Depends, Header, HTTPException, Request, status
from starlette.concurrency import run_in_threadpool

from api.fair_use import RateLimiter
from circuitd.settings import get_settings
from circuitd.store import TASK_NAME, Job, Store, celery_conf, get_store

KEY_CACHE_S = 10.0  # a revoked key stops working within this many seconds


async def store() -> Store:
    """Async (no I/O once the store exists): a sync dependency would cost a thread hop per request."""
    return get_store()


StoreDep = Annotated[Store, Depends(store)]


class KeyCache:
    """Owners by key, kept briefly: most requests then skip the database."""

    def __init__(self, ttl: float = KEY_CACHE_S):
        self.ttl = ttl
        self._items: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def cached(self, key: str) -> str | None:
        with self._lock:
            hit = self._items.get(key)
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

    def remember(self, key: str, owner: str) -> None:
        with self._lock:
            if len(self._items) > 10_000:
                self._items.clear()
            self._items[key] = (owner, time.monotonic() + self.ttl)


_keys = KeyCache()


def rate_limiter(request: Request) -> RateLimiter:
    """The app's limiter (``create_app`` makes one per app, from the settings)."""
    limiter = getattr(request.app.state, "rate_limiter", None)
    if not isinstance(limiter, RateLimiter):
        s = get_settings()
        limiter = request.app.state.rate_limiter = RateLimiter(s.rate_limit_per_s, s.rate_limit_burst)
    return limiter


async def current_owner(
    st: StoreDep, request: Request, authorization: Annotated[str | None, Header()] = None
) -> str:
    """The owner of the bearer key, within its request rate; with auth disabled (explicitly, by
    setting) everyone is ``local``.

    Async: a cached key costs nothing, so it stays on the event loop; a miss (rarer than every
    10 s per key) is a database lookup, run in the threadpool so the loop never waits on it.
    """
    if get_settings().auth_disabled:
        owner = "local"
    else:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "missing API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        owner = _keys.cached(token)
        if owner is None:
            owner = await run_in_threadpool(st.owner_for_key, token)
            if owner is None:
                raise HTTPException(
                    status.HTTP_401_UNAUTHORIZED, "unknown API key", headers={"WWW-Authenticate": "Bearer"}
                )
            _keys.remember(token, owner)
    rate_limiter(request).check(owner)
    return owner


OwnerDep = Annotated[str, Depends(current_owner)]


@lru_cache
def celery_client() -> Celery:
    """A Celery app that only sends: tasks go by name, so no worker code (and no torch) is imported."""
    app = Celery("circuitd-api", set_as_current=False)
    app.conf.update(celery_conf())
    return app


def send_job(job: Job) -> None:
    celery_client().send_task(TASK_NAME, args=[job.id], queue=job.queue)


def owned_job(job_id: str, owner: OwnerDep, st: StoreDep) -> Job:
    """The caller's job; another owner's job is 404 as if it did not exist."""
    job = st.get_job(job_id, owner)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return job


JobDep = Annotated[Job, Depends(owned_job)]
