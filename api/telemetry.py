"""Prometheus metrics: request counts and latencies by route, submissions, jobs by status."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from circuitd.store import get_store

disable_created_metrics()  # the *_created series only add noise here
registry = CollectorRegistry()
requests = Counter(
    "circuitd_http_requests", "HTTP requests served", ["method", "route", "status"], registry=registry
)
latency = Histogram(
    "circuitd_http_request_seconds", "HTTP request latency", ["method", "route"], registry=registry,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
submitted = Counter("circuitd_jobs_submitted", "jobs created through the API", registry=registry)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def labels(scope: dict[str, Any]) -> tuple[str, str]:
    """``(method, route)`` from a bounded set: any other method is ``OTHER``, an unrouted path
    ``unmatched``, so invented methods and paths cannot grow the series without bound."""
    method = scope.get("method", "")
    route = getattr(scope.get("route"), "path", None)
    return (method if method in METHODS else "OTHER"), (route if isinstance(route, str) else "unmatched")


class JobsByStatus(Collector):
    """Counted in the store at scrape time, so every API replica reports the same numbers."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("circuitd_jobs", "jobs in the store by status", labels=["status"])
        try:
            counts = get_store().count_by_status()
        except Exception:  # a scrape must not fail because the database is away; /readyz says so
            counts = {}
        for status, n in counts.items():
            family.add_metric([status], n)
        yield family


registry.register(JobsByStatus())


class MetricsMiddleware:
    """Pure ASGI: times each request and labels it by its route template and a known method."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        code = [500]

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                code[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            method, route = labels(scope)
            requests.labels(method, route, str(code[0])).inc()
            latency.labels(method, route).observe(time.perf_counter() - started)
