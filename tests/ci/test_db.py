"""The schema: migrations and models agree, and read-only access never writes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, select, text

import ci.db
from ci.db import (
    HEAD_REVISION,
    MIGRATIONS,
    PING_IDLE_SECONDS,
    ensure_schema,
    make_engine,
    ping_when_idle,
    read_only_engine,
    schema_is_current,
)
from ci.models import Base, Event


def test_migrations_build_exactly_the_models_schema(engine: Engine) -> None:
    # A column added to ci/models.py without a migration (or the reverse) shows here.
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_the_head_revision_the_schema_check_expects_is_alembics_head(tmp_path: Path) -> None:
    # A new migration must move HEAD_REVISION too, or every process would upgrade
    # at each start (behind) or refuse a database it just migrated.
    script = ScriptDirectory.from_config(ci.db.alembic_config(f"sqlite:///{tmp_path}/x.db"))
    assert script.dir == str(MIGRATIONS)
    assert script.get_heads() == [HEAD_REVISION]


def test_the_schema_check_reads_the_version_table(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'ci.db'}")
    assert not schema_is_current(engine)
    ensure_schema(engine)
    assert schema_is_current(engine)
    command.downgrade(ci.db.alembic_config(str(engine.url)), "-1")
    assert not schema_is_current(engine)
    ensure_schema(engine)  # one migration behind: upgraded again
    assert schema_is_current(engine)
    assert "test_flips" in inspect(engine).get_table_names()
    engine.dispose()


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


# -- a pooled connection is pinged only when it sat idle ----------------------------------------


def _pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Count the dialect's pings (the seam the pool's checkout calls)."""
    seen: list[object] = []
    real = engine.dialect.do_ping

    def counting(dbapi_conn: object) -> bool:
        seen.append(dbapi_conn)
        return real(dbapi_conn)

    monkeypatch.setattr(engine.dialect, "do_ping", counting)
    return seen


@pytest.mark.postgres
def test_a_connection_returned_moments_ago_is_not_pinged_one_idle_is(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(pg_url)
    try:
        pings = _pings(engine, monkeypatch)
        for _ in range(3):  # a claim and a record, back to back
            with engine.begin() as conn:
                conn.execute(text("SELECT 1"))
        assert pings == []
        now = time.monotonic()
        monkeypatch.setattr(ci.db.time, "monotonic", lambda: now + PING_IDLE_SECONDS + 1)
        with engine.begin() as conn:  # after a build of minutes, or an idle poll
            conn.execute(text("SELECT 1"))
        assert len(pings) == 1
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_connection_the_server_closed_while_idle_is_replaced(pg_url: str) -> None:
    engine = make_engine(pg_url)
    ping_when_idle(engine, idle_seconds=0)  # every checkout after the first is "idle"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            first = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with admin.connect() as conn:  # a server restart, an idle timeout
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        with engine.begin() as conn:  # no OperationalError: the dead one was dropped
            again = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        assert again != first
    finally:
        admin.dispose()
        engine.dispose()
