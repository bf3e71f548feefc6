"""The schema: migrations and models agree, and read-only access never writes."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, select

from ci.db import ensure_schema, make_engine, read_only_engine, schema_is_current
from ci.models import Base, Event


def test_migrations_build_exactly_the_models_schema(engine: Engine) -> None:
    # A column added to ci/models.py without a migration (or the reverse) shows here.
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_read_only_engine_reads_and_cannot_write(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ci.db'}"
    assert read_only_engine(url) is None  # no file: nothing to read, nothing created
    assert not (tmp_path / "ci.db").exists()
    writer = make_engine(url)
    ensure_schema(writer)
    writer.dispose()
    reader = read_only_engine(url)
    assert reader is not None
    try:
        assert schema_is_current(reader)
        with reader.connect() as conn:
            assert conn.execute(select(Event.id)).all() == []
            try:
                conn.exec_driver_sql("CREATE TABLE intruder (x INTEGER)")
            except Exception as exc:  # sqlite3.OperationalError: readonly database
                assert "readonly" in str(exc).replace("-", "").lower()
            else:
                raise AssertionError("a read-only engine wrote to the database")
    finally:
        reader.dispose()
