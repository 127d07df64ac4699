"""Bring an existing database up to the tables' columns and indexes, so an upgrade keeps its jobs and keys.

``create_all`` makes missing tables but never touches an existing one. New columns are
nullable, so adding them is one ``ALTER TABLE ... ADD COLUMN`` each; a missing column that
cannot be null is left to the operator, with a message naming it. Imports no torch.
"""

from __future__ import annotations

from sqlalchemy import MetaData, inspect, text
from sqlalchemy.engine import Engine

from circuitd.errors import CircuitdError


def add_missing_columns(engine: Engine, metadata: MetaData) -> list[str]:
    """Add the nullable columns ``metadata`` has and the database lacks; returns ``table.column`` added."""
    added: list[str] = []
    insp = inspect(engine)
    prep = engine.dialect.identifier_preparer
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            if not insp.has_table(table.name):
                continue
            have = {c["name"] for c in insp.get_columns(table.name)}
            for col in table.columns:
                if col.name in have:
                    continue
                if not col.nullable:
                    raise CircuitdError(
                        f"store: table '{table.name}' lacks the column '{col.name}', which cannot be null: "
                        "add it by hand"
                    )
                kind = col.type.compile(dialect=engine.dialect)
                ddl = f"ALTER TABLE {prep.format_table(table)} ADD COLUMN {prep.quote(col.name)} {kind}"
                conn.execute(text(ddl))
                added.append(f"{table.name}.{col.name}")
            indexes = {ix["name"] for ix in insp.get_indexes(table.name)}
            for index in table.indexes:
                if index.name not in indexes:
                    index.create(conn)
                    added.append(f"{table.name}.{index.name}")
    return added
