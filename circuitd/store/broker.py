"""Queues and the Celery configuration the API (sender) and the workers (consumers) share."""

from typing import Any

from circuitd.settings import get_settings

TASK_NAME = "circuitd.run_job"  # the API sends this by name; workers/jobs.py registers it


def queue_for(device: str, prefix: str | None = None) -> str:
    """``gpu`` for CUDA devices, else ``cpu`` (with the deployment's prefix)."""
    prefix = get_settings().queue_prefix if prefix is None else prefix
    return f"{prefix}{'gpu' if device.startswith('cuda') else 'cpu'}"


def broker_options(url: str) -> dict[str, Any]:
    """Transport options: Redis redelivers unacknowledged messages only after the visibility timeout."""
    if url.startswith(("redis://", "rediss://", "redis+socket://")):
        return {"visibility_timeout": get_settings().visibility_timeout}
    if url.startswith("sqla+sqlite"):
        # kombu passes these to SQLAlchemy's create_engine
        return {"connect_args": {"timeout": get_settings().db_busy_timeout_s}}
    return {}


def celery_conf(broker_url: str | None = None) -> dict[str, Any]:
    """The Celery settings both sides share: the API sends with them, the workers consume with them."""
    s = get_settings()
    url = broker_url or s.broker_url
    return {
        "broker_url": url,
        "broker_transport_options": broker_options(url),
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 5,
        "task_default_queue": queue_for("cpu"),
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "task_soft_time_limit": s.job_soft_time_limit,
        "task_time_limit": max(s.job_time_limit, s.job_soft_time_limit + 1),
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
    }
