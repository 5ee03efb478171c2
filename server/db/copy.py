"""Copying every record from one database to another: how an installation that started on
the embedded SQLite moves to PostgreSQL (`kiln server copy-database --to URL`).

The target is migrated to the same schema revision first and must be empty; rows go across
table by table in dependency order, in chunks, in one transaction on the target; then
PostgreSQL's id sequences are moved past the copied ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, Integer, func, select

from kiln.errors import KilnError
from server.db.migrate import current_revision, upgrade
from server.db.schema import metadata

CHUNK = 5000


class CopyError(KilnError):
    pass


@dataclass(frozen=True)
class CopiedTable:
    name: str
    rows: int


def copy_database(source: Engine, target: Engine) -> list[CopiedTable]:
    if current_revision(source) is None:
        raise CopyError("the source database has no Kiln schema")
    upgrade(source)
    upgrade(target)
    copied: list[CopiedTable] = []
    with source.connect() as reading, target.begin() as writing:
        for table in metadata.sorted_tables:
            if writing.execute(select(func.count()).select_from(table)).scalar():
                raise CopyError(f"the target database is not empty (table {table.name} has "
                                "rows); copy into a new database")
        for table in metadata.sorted_tables:
            count = 0
            result = reading.execution_options(stream_results=True).execute(select(table))
            for chunk in result.mappings().partitions(CHUNK):
                writing.execute(table.insert(), [dict(row) for row in chunk])
                count += len(chunk)
            copied.append(CopiedTable(table.name, count))
        if target.dialect.name == "postgresql":
            for table in metadata.sorted_tables:
                for column in table.primary_key.columns:
                    if isinstance(column.type, Integer) and column.autoincrement is not False \
                            and len(table.primary_key.columns) == 1:
                        writing.execute(select(func.setval(
                            func.pg_get_serial_sequence(table.name, column.name),
                            func.coalesce(func.max(column), 0) + 1, False)))
    return copied
