"""The job store: jobs, API keys and graph payloads in one SQL database. Imports no torch.

``tables`` holds the rows, ``jobs`` the state machine over them (``Store``), ``broker`` the
queues and the Celery settings the API and the workers share.
"""

from circuitd.store.broker import TASK_NAME, broker_options, celery_conf, queue_for, worker_id
from circuitd.store.jobs import (
    Claim,
    IdempotencyConflict,
    Store,
    default_database_url,
    get_store,
    make_engine,
)
from circuitd.store.tables import (
    TERMINAL,
    ApiKey,
    GraphBlob,
    Job,
    JobStatus,
    finite,
    hash_key,
    spec_hash,
    utcnow,
)

__all__ = [
    "TASK_NAME", "TERMINAL", "ApiKey", "Claim", "GraphBlob", "IdempotencyConflict", "Job", "JobStatus",
    "Store", "broker_options", "celery_conf", "default_database_url", "finite", "get_store", "hash_key",
    "make_engine", "queue_for", "spec_hash", "utcnow", "worker_id",
]
