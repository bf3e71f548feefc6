"""The benchmarks' PostgreSQL databases: made for a run (or kept seeded) and dropped;
COPY into them with the column list checked against the model's table.

Every benchmark that measures on PostgreSQL gets a database of its own on the
server the tests use (`HYPERV_CI_TEST_PG`, else the local one), so a figure is
never taken on a database something else is writing to.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Table, create_engine, text

ADMIN_URL = os.environ.get("HYPERV_CI_TEST_PG",
                           "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def scratch_name() -> str:
    return f"hypervci_bench_{uuid.uuid4().hex[:8]}"


def database_url(name: str, admin_url: str = ADMIN_URL) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + name


def create_database(name: str, admin_url: str = ADMIN_URL, *, replace: bool = False) -> str:
    """Create database `name` (dropping one of that name first if `replace`); its URL."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if replace:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE template0'))
    finally:
        admin.dispose()
    return database_url(name, admin_url)


def drop_database(name: str, admin_url: str = ADMIN_URL) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def columns_for(table: Table, columns: Sequence[str]) -> list[str]:
    """`columns`, checked against the model's table: every NOT NULL column without a
    server default is given (the models' defaults are Python-side, COPY skips them)."""
    known = {c.name for c in table.columns}
    unknown = set(columns) - known
    needed = {c.name for c in table.columns if not c.nullable and c.server_default is None
              and not (c.primary_key and c.autoincrement is not False and c.name not in columns)}
    missing = needed - set(columns)
    if unknown or missing:
        raise ValueError(f"{table.name}: unknown columns {sorted(unknown)}, "
                         f"missing NOT NULL columns {sorted(missing)}")
    return list(columns)


def copy_rows(raw: Any, table: Table, columns: Sequence[str],
              rows: Iterable[Sequence[Any]]) -> int:
    """COPY `rows` into `table` (column order as `columns`); returns the count.
    psycopg formats each row (in C) and sends them in large blocks."""
    names = columns_for(table, columns)
    count = 0
    with raw.cursor() as cursor:
        sql = f"COPY {table.name} ({', '.join(names)}) FROM STDIN"
        with cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)
                count += 1
    return count
