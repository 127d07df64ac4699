"""Database time: the one clock heartbeats, staleness and the sweeper's ages are measured on.

Workers, sweepers and the API run on different hosts whose clocks disagree; the database
is the one place they all reach, so every liveness stamp is written by the database
(``now_sql``) and compared against it (``DbClock.now``). The API, which only reads
stamps, estimates database time from its monotonic clock (which no clock step moves) and
an offset measured now and then (``DbClock.estimate``): no extra query per request.
Imports no torch.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import Float, literal_column, select
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

OFFSET_REFRESH_S = 30.0  # how long a measured offset between the monotonic and the database clock is used

_NOW = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgresql": "CAST(extract(epoch from clock_timestamp()) AS double precision)",
}


def now_sql(dialect: str) -> ColumnElement[float]:
    """The database's current time in epoch seconds, as an SQL expression (written or compared in SQL)."""
    try:
        return literal_column(_NOW[dialect], Float)
    except KeyError:
        raise ValueError(f"database time: no expression for the '{dialect}' dialect") from None


class DbClock:
    """Reads the database's clock, and estimates it between reads."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.sql = now_sql(engine.dialect.name)
        self._offset: tuple[float, float] | None = None  # (database minus monotonic seconds, when measured)
        self._lock = threading.Lock()

    def now(self) -> float:
        """One query: the database's time now, in epoch seconds."""
        with self.engine.connect() as conn:
            return float(conn.execute(select(self.sql)).scalar_one())

    def estimate(self) -> float:
        """Database time from the monotonic clock and an offset at most ``OFFSET_REFRESH_S`` old."""
        with self._lock:
            measured = self._offset
        if measured is None or time.monotonic() - measured[1] > OFFSET_REFRESH_S:
            before = time.monotonic()
            db = self.now()
            after = time.monotonic()
            with self._lock:
                self._offset = measured = (db - (before + after) / 2, after)
        return time.monotonic() + measured[0]
