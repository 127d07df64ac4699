"""The Celery app, configured from settings (``CIRCUITD_BROKER_URL`` and the job limits).

Start a worker with ``circuitd worker`` or ``celery -A workers.app worker -Q cpu``. The app
imports no torch: the pool child imports it with the first job and keeps models loaded.
"""

from __future__ import annotations

from celery import Celery
from kombu.transport import sqlalchemy as kombu_sqla

from circuitd.store import celery_conf

# The embedded broker (kombu's SQLAlchemy transport) polls its table; the default 1 s adds
# a second to every job. kombu passes transport options to create_engine, so set it here.
kombu_sqla.Transport.polling_interval = 0.2


def make_app(broker_url: str | None = None) -> Celery:
    app = Celery("circuitd", include=["workers.jobs"])
    app.conf.update(celery_conf(broker_url))
    app.conf.worker_proc_alive_timeout = 60  # a busy machine may start a pool child slowly
    return app


app = make_app()
