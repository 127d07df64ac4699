"""What routes depend on: the store, the caller's identity, the task sender, cached graphs."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from functools import lru_cache
from typing import Annotated

import networkx as nx
from celery import Celery
from fastapi import Depends, Header, HTTPException, status

from circuitd.settings import get_settings
from circuitd.store import TASK_NAME, Job, JobStatus, Store, celery_conf, get_store
from graphs import from_node_link

KEY_CACHE_S = 10.0  # a revoked key stops working within this many seconds


async def store() -> Store:
    """Async (no I/O once the store exists): a sync dependency would cost a thread hop per request."""
    return get_store()


StoreDep = Annotated[Store, Depends(store)]


class KeyCache:
    """Owner lookups by key, kept briefly: most requests then skip the database."""

    def __init__(self, ttl: float = KEY_CACHE_S):
        self.ttl = ttl
        self._items: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def owner(self, st: Store, key: str) -> str | None:
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        owner = st.owner_for_key(key)
        if owner is not None:
            with self._lock:
                if len(self._items) > 10_000:
                    self._items.clear()
                self._items[key] = (owner, now + self.ttl)
        return owner


_keys = KeyCache()


async def current_owner(st: StoreDep, authorization: Annotated[str | None, Header()] = None) -> str:
    """The owner of the bearer key; with auth disabled (explicitly, by setting) everyone is ``local``.

    Async: a cached key costs nothing, and a miss is one indexed lookup, rarer than every 10 s per key.
    """
    if get_settings().auth_disabled:
        return "local"
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    owner = _keys.owner(st, token.strip())
    if owner is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "unknown API key", headers={"WWW-Authenticate": "Bearer"}
        )
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


class GraphCache:
    """Decompressed graphs of finished jobs (they never change), most recently used kept."""

    def __init__(self, size: int = 32):
        self.size = size
        self._items: OrderedDict[str, tuple[bytes, nx.MultiDiGraph[str] | nx.DiGraph[str]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, st: Store, job: Job) -> tuple[bytes, nx.MultiDiGraph[str] | nx.DiGraph[str]]:
        if job.status != JobStatus.succeeded:
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"job {job.id} is {job.status}: a graph exists once it succeeded"
            )
        with self._lock:
            hit = self._items.get(job.id)
            if hit is not None:
                self._items.move_to_end(job.id)
                return hit
        raw = st.load_graph_bytes(job.id)
        if raw is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job.id} has no stored graph")
        graph = from_node_link(json.loads(raw))
        with self._lock:
            self._items[job.id] = (raw, graph)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return raw, graph


graphs = GraphCache()
