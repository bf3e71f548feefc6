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


def test_processes_started_together_on_an_empty_database_all_get_the_schema(
        db_url: str) -> None:
    # Workers and a listener started at once each run ensure_schema; without a
    # lock, PostgreSQL makes all but one die on DuplicateTable / UniqueViolation.
    import threading

    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def start() -> None:
        engine = make_engine(db_url)
        try:
            barrier.wait(timeout=30)
            ensure_schema(engine)
        except BaseException as exc:  # every failure is the finding
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a process never got the schema"
    assert errors == []
    engine = make_engine(db_url)
    try:
        assert schema_is_current(engine)
    finally:
        engine.dispose()
