"""Raw event lines into the `events` table at the driver's speed.

The store hands over its lines as received (`Received`: one receive time,
each line's type and its UTF-8 bytes) and never a Python object per row.
The bytes go to the database as they came off the wire: decoding a 2 KB
non-ASCII line to `str` only for the driver to encode it back cost more than
half of SQLite's insert (bench/listener_throughput.py). SQLite takes them as
blobs cast to TEXT in the statement (stored as text, read back as `str`), 500
rows a statement; PostgreSQL takes one COPY block the store formats itself.
Lines that parsed as JSON are valid UTF-8 without NUL (a JSON parser refuses
either), and the store makes every other line so before it gets here.

The driver's own errors are raised as SQLAlchemy's, so the caller tells an
outage (OperationalError: retry the batch later) from a refused value as it
would for a Core statement.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from ci.models import Event

if TYPE_CHECKING:
    import psycopg


@dataclass(slots=True)
class Received:
    """Lines received together: one receive time, each line's type and UTF-8 bytes."""

    at: datetime
    kinds: list[str] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.raws)


_SQLITE_INSERT = "INSERT INTO events (type, raw, received_at) VALUES (?, CAST(? AS TEXT), ?)"
_COPY_EVENTS = "COPY events (type, raw, received_at) FROM STDIN"


def insert_lines(connection: Connection, batches: Sequence[Received]) -> None:
    """Insert every line of `batches` in the connection's transaction."""
    dialect = connection.dialect.name
    error = _dbapi_error(connection)
    try:
        if dialect == "sqlite":
            _sqlite(connection, batches)
        elif dialect == "postgresql":
            _copy(connection, batches)
        else:
            connection.execute(insert(Event), [
                {"type": kind, "raw": raw.decode(), "received_at": batch.at}
                for batch in batches for kind, raw in zip(batch.kinds, batch.raws, strict=True)])
    except error as exc:
        raise DBAPIError.instance(_COPY_EVENTS if dialect == "postgresql" else _SQLITE_INSERT,
                                  None, exc, error) from exc


def _dbapi_error(connection: Connection) -> type[Exception]:
    dbapi = connection.dialect.dbapi
    assert dbapi is not None
    return cast("type[Exception]", dbapi.Error)


def _sqlite(connection: Connection, batches: Sequence[Received]) -> None:
    # received_at exactly as SQLAlchemy would write it (through UTCDateTime),
    # worked out once per received chunk rather than once per row.
    dialect = connection.dialect
    stamp = Event.__table__.c.received_at.type.dialect_impl(dialect).bind_processor(dialect)
    raw = cast("sqlite3.Connection", connection.connection.dbapi_connection)
    per_statement = max(1, min(_SQLITE_ROWS,
                               raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 3))
    params: list[Any] = []
    cursor = raw.cursor()
    try:
        for batch in batches:
            at = stamp(batch.at) if stamp is not None else batch.at
            for kind, line in zip(batch.kinds, batch.raws, strict=True):
                params += (kind, line, at)
                if len(params) == 3 * per_statement:
                    cursor.execute(_sqlite_insert(per_statement), params)
                    params = []
        if params:
            cursor.execute(_sqlite_insert(len(params) // 3), params)
    finally:
        cursor.close()


# Rows per INSERT on SQLite: sqlite3 lets go of the interpreter lock once a
# statement, and executemany runs one statement a row, so a reader thread busy
# parsing would make the writer wait for the lock (5 ms, the switch interval)
# up to once a row; a few statements of many rows wait a few times a batch.
_SQLITE_ROWS = 500


@functools.lru_cache(maxsize=8)
def _sqlite_insert(rows: int) -> str:
    # Placeholders only: no value is ever part of the statement's text.
    return ("INSERT INTO events (type, raw, received_at) VALUES "  # noqa: S608
            + ", ".join(["(?, CAST(? AS TEXT), ?)"] * rows))


def copy_text(batches: Sequence[Received]) -> bytes:
    """The lines as PostgreSQL's COPY text format: a tab between columns, a backslash,
    tab, carriage return or newline within a value escaped (JSON may have a tab or
    a CR between its tokens; a type is Gerrit's text, whatever it holds)."""
    out = []
    for batch in batches:
        tail = b"\t" + batch.at.isoformat().encode() + b"\n"
        for kind, raw in zip(batch.kinds, batch.raws, strict=True):
            out.append(_copy_escape(kind.encode()) + b"\t" + _copy_escape(raw) + tail)
    return b"".join(out)


def _copy_escape(value: bytes) -> bytes:
    if b"\\" in value:
        value = value.replace(b"\\", b"\\\\")
    if b"\t" in value:
        value = value.replace(b"\t", b"\\t")
    if b"\r" in value:
        value = value.replace(b"\r", b"\\r")
    if b"\n" in value:
        value = value.replace(b"\n", b"\\n")
    return value


def _copy(connection: Connection, batches: Sequence[Received]) -> None:
    raw = cast("psycopg.Connection[Any]", connection.connection.dbapi_connection)
    with raw.cursor() as cursor, cursor.copy(_COPY_EVENTS) as copy:
        copy.write(copy_text(batches))
