"""Fair use between owners: a request rate per owner (token bucket) and a cap on an owner's
active jobs, each refused with 429 and a ``Retry-After`` in whole seconds.

The rate is counted in process: each API process (uvicorn worker, replica) keeps its own
buckets, so N processes behind a balancer let an owner through up to N times the rate. The
job cap is counted in the store, in the transaction that creates the job, so it holds across
processes.
"""

from __future__ import annotations

import math
import threading
import time

from api.errors import ApiError
from circuitd.store import QuotaExceeded

QUOTA_RETRY_AFTER_S = 10  # jobs end at no known time: a client at its quota polls this often
MAX_TRACKED_OWNERS = 10_000  # full buckets are forgotten past this many owners


class RateLimiter:
    """``per_s`` requests per second and owner sustained, ``burst`` at once; ``per_s <= 0``: no limit."""

    def __init__(self, per_s: float, burst: int):
        self.per_s = per_s
        self.burst = max(1, burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # owner -> (tokens, at monotonic time)
        self._lock = threading.Lock()

    def take(self, owner: str) -> float:
        """Spend one token of ``owner``'s; 0 when it had one, else the seconds until it will."""
        if self.per_s <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(owner, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.per_s)
            if tokens >= 1.0:
                self._buckets[owner] = (tokens - 1.0, now)
                if len(self._buckets) > MAX_TRACKED_OWNERS:
                    self._forget_full(now)
                return 0.0
            self._buckets[owner] = (tokens, now)
            return (1.0 - tokens) / self.per_s

    def check(self, owner: str) -> None:
        """Raise 429 ``rate_limited`` when ``owner`` is over its rate."""
        wait = self.take(owner)
        if wait > 0:
            detail = (
                f"rate limit: more than {self.per_s:g} requests per second (CIRCUITD_RATE_LIMIT_PER_S, "
                f"bursts of {self.burst}: CIRCUITD_RATE_LIMIT_BURST); retry after the Retry-After seconds"
            )
            raise ApiError(429, detail, "rate_limited", {"Retry-After": str(max(1, math.ceil(wait)))})

    def _forget_full(self, now: float) -> None:
        """A full bucket is the same as none: drop those (and everything, if all are in use)."""
        full = [o for o, (t, at) in self._buckets.items() if t + (now - at) * self.per_s >= self.burst]
        for owner in full:
            del self._buckets[owner]
        if len(self._buckets) > MAX_TRACKED_OWNERS:
            self._buckets.clear()


def over_quota(exc: QuotaExceeded) -> ApiError:
    """429 ``quota``: the owner's queued and running jobs are at the cap."""
    detail = (
        f"quota: {exc.active} jobs queued or running, at the limit of {exc.limit} per owner "
        "(CIRCUITD_MAX_ACTIVE_JOBS_PER_OWNER); wait for one to finish, or cancel or delete one"
    )
    return ApiError(429, detail, "quota", {"Retry-After": str(QUOTA_RETRY_AFTER_S)})
