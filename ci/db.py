"""Database engines and sessions, and schema upgrades through Alembic.

SQLite is the embedded default (one machine); PostgreSQL is the shared engine
when workers run on many hosts. Both go through the same code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, CursorResult, Engine, Result, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.orm import Session, sessionmaker

from ci.errors import PermanentError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration's revision (migrations/versions/): what the version table
# of a current database holds. Checking it is one SELECT, without alembic, whose
# script directory and dialect modules cost ~0.15 s at every command's and
# process's start; tests/ci/test_db.py checks that it is alembic's head.
HEAD_REVISION = "0012"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with the per-dialect settings the queue relies on."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the dashboard read while a worker writes; foreign keys
            # are off by default in SQLite.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=30000")
            _set_wal(cur)
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # BEGIN IMMEDIATE takes the write lock up front, so two workers
            # claiming at once serialise instead of failing to upgrade a lock.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        # pysqlite's own transaction handling would defeat BEGIN IMMEDIATE.
        @event.listens_for(engine, "connect", insert=True)
        def _no_pysqlite_begin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        return engine
    engine = create_engine(url, **kwargs)
    ping_when_idle(engine)
    return engine


# A connection back in the pool for longer than this is pinged before it is
# used again. Why not `pool_pre_ping` on every checkout: a worker's no-op build
# checks out twice, milliseconds apart, and the two pings were 2 of its 12
# round trips. The server closes a connection (restart, failover, an idle
# timeout) while it sits in the pool, which after a build of minutes or an idle
# poll is long; a connection returned moments ago is as likely to die in the
# next statement as in the ping, which the ping does not protect against
# anyway. A transaction that fails so rolls back and is retried: the worker's
# loop claims again (nothing was claimed), and the pool, seeing a disconnect,
# replaces every connection older than it.
PING_IDLE_SECONDS = 5.0
_RETURNED_AT = "hyperv_ci_returned_at"


def ping_when_idle(engine: Engine, idle_seconds: float = PING_IDLE_SECONDS) -> None:
    """Ping a pooled connection on checkout only when it has been idle `idle_seconds`;
    a dead one is replaced, and the pool's older ones with it (the pool retries the
    checkout)."""

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_conn: Any, record: Any) -> None:
        record.info[_RETURNED_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get(_RETURNED_AT)
        if returned is None or time.monotonic() - returned < idle_seconds:
            return  # new (just connected) or used moments ago
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as exc:
            if not engine.dialect.is_disconnect(exc, dbapi_conn, None):
                raise
            alive = False
        if not alive:
            record.info.pop(_RETURNED_AT, None)
            # As pool_pre_ping does: the older connections are likely dead too.
            raise InvalidatePoolError("the pooled connection was closed by the server")


def _set_wal(cursor: Any, attempts: int = 300) -> None:
    """Switch a SQLite database to WAL (it stays so, in the file).

    Changing the journal mode needs the database to itself and SQLite does not
    wait for that in the busy handler: processes started together on a new
    file got "database is locked". Once the file is in WAL, nothing is changed.
    """
    import sqlite3
    import time

    for attempt in range(attempts):
        try:
            mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.1)


def rows_changed(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE touched (the claim-by-update checks).

    `Session.execute` is typed as returning a Result; for a DML statement it is
    a CursorResult, which carries the count.
    """
    return cast("CursorResult[Any]", result).rowcount


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit (handy for returning rows)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception."""
    with factory() as session, session.begin():
        yield session


def alembic_config(url: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig  # only when migrating

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


# Any fixed number: the key of the PostgreSQL advisory lock migrations run under.
MIGRATION_LOCK = 0x68797076  # "hypv"


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (creates an empty database's tables).

    Processes started together (8 workers and a listener on an empty
    database) must not all create the tables: on PostgreSQL the migration
    runs under a transaction-scoped advisory lock, so the others wait and
    then find the schema current; on SQLite `BEGIN IMMEDIATE` serialises them.
    Alembic reads the current version inside that transaction, after the lock.
    """
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            _sqlite_foreign_keys(conn, on=False)
        try:
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                if sqlite:
                    _check_foreign_keys(conn)
        finally:
            if sqlite:
                _sqlite_foreign_keys(conn, on=True)


def _sqlite_foreign_keys(conn: Connection, *, on: bool) -> None:
    # SQLite has no ALTER COLUMN: alembic's batch mode copies the table into a
    # new one and drops the old. With foreign keys on, that DROP deletes every
    # row first and fires the ON DELETE actions of the tables pointing at it
    # (nodes.build_id SET NULL, build steps and results CASCADE). SQLite's own
    # procedure for such changes (lang_altertable.html, "Making Other Kinds Of
    # Table Schema Changes") turns them off outside the transaction, then runs
    # `PRAGMA foreign_key_check` before commit. A PRAGMA inside a transaction
    # is a no-op, hence the driver's connection (autocommit here).
    conn.connection.driver_connection.execute(  # type: ignore[union-attr]
        f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


def _check_foreign_keys(conn: Connection) -> None:
    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise PermanentError(f"the migration left rows whose foreign keys point nowhere: "
                           f"{broken[:5]}")


def ensure_schema(engine: Engine) -> None:
    """Upgrade if the database is empty or behind: every process calls this at start."""
    names = set(inspect(engine).get_table_names())
    if "alembic_version" not in names or not _at_head(engine):
        logger.info("upgrading database schema")
        upgrade(engine)


def _at_head(engine: Engine) -> bool:
    with engine.connect() as conn:
        current = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars()
        return set(current) == {HEAD_REVISION}


def read_only_engine(url: str) -> Engine | None:
    """An engine that can only read an existing database, or None when there is none.

    For previews (`hyperv-ci render`): they must never create, migrate or lock
    the production database. A SQLite file that does not exist is None; one
    opened read-only gets none of the writer's pragmas (WAL, BEGIN IMMEDIATE).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(url, pool_pre_ping=True,
                               execution_options={"postgresql_readonly": True})
        return engine
    path = parsed.database or ""
    if not path or path == ":memory:" or not Path(path).is_file():
        return None
    # mode=ro refuses every write; a WAL database in a read-only folder also
    # needs its -shm file, which SQLite cannot create there: then it is skipped.
    uri = f"file:{Path(path).resolve().as_posix()}?mode=ro"
    return create_engine("sqlite://", creator=lambda: _sqlite_ro(uri))


def _sqlite_ro(uri: str) -> Any:
    import sqlite3

    return sqlite3.connect(uri, uri=True, timeout=5, check_same_thread=False)


def schema_is_current(engine: Engine) -> bool:
    """Whether the database holds the newest schema (without changing anything)."""
    if "alembic_version" not in set(inspect(engine).get_table_names()):
        return False
    return _at_head(engine)
