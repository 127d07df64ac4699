"""The store the worker tests share: a real SQLite file, and a real PostgreSQL database when one
answers (``CIRCUITD_TEST_POSTGRES``; skipped otherwise)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from circuitd.store import Store

PG_ADMIN = os.environ.get("CIRCUITD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _postgres_url() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_ADMIN.replace("postgresql+psycopg", "postgresql"), autocommit=True,
                                connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL does not answer at {PG_ADMIN}: {exc}")
    name = f"circuitd_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.service)])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Store]:
    if request.param == "sqlite":
        st = Store(f"sqlite:///{tmp_path / 'store.db'}")
        yield st
        st.engine.dispose()
        return
    gen = _postgres_url()
    url = next(gen)
    st = Store(url)
    try:
        yield st
    finally:
        st.engine.dispose()
        next(gen, None)
