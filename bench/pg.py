"""The benchmarks' PostgreSQL databases: made for a run (or kept seeded) and dropped.

Every benchmark that measures on PostgreSQL gets a database of its own on the
server the tests use (`HYPERV_CI_TEST_PG`, else the local one), so a figure is
never taken on a database something else is writing to.
"""

from __future__ import annotations

import os
import uuid

from sqlalchemy import create_engine, text

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
