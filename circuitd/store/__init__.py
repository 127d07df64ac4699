"""The job store: jobs, API keys and graph payloads in one SQL database. Imports no torch.

``tables`` holds the rows, ``jobs`` the state machine over them (``Store``), ``broker`` the
queues and the Celery settings the API and the workers share, ``clock`` the database time
liveness is measured on, ``workers`` the workers' ids, ``migrate`` the columns an older
store lacks.
"""

from circuitd.store.broker import TASK_NAME, broker_options, celery_conf, queue_for
from circuitd.store.jobs import (
    Claim,
    IdempotencyConflict,
    QuotaExceeded,
    Store,
    check_liveness_settings,
    default_database_url,
    get_store,
    make_engine,
)
from circuitd.store.tables import (
    TERMINAL,
    ApiKey,
    ErrorCode,
    GraphBlob,
    Job,
    JobStatus,
    WorkerRow,
    finite,
    hash_key,
    spec_hash,
    utcnow,
)
from circuitd.store.workers import holder_is_dead, worker_id

__all__ = [
    "TASK_NAME", "TERMINAL", "ApiKey", "Claim", "ErrorCode", "GraphBlob", "IdempotencyConflict", "Job",
    "JobStatus", "QuotaExceeded", "Store", "WorkerRow", "broker_options", "celery_conf",
    "check_liveness_settings", "default_database_url", "finite", "get_store", "hash_key", "holder_is_dead",
    "make_engine", "queue_for", "spec_hash", "utcnow", "worker_id",
]
