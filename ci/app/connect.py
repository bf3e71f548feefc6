"""The connections a command opens: the database's sessions, a first look at Gerrit."""

from __future__ import annotations

import logging

import click
from sqlalchemy.orm import Session, sessionmaker

from ci.config import Config
from ci.db import ensure_schema, make_engine, make_sessionmaker
from ci.gerrit_errors import GerritError, GerritRefused


def check_gerrit(config: Config, path: str) -> None:
    """Exit 2 if Gerrit refuses us (its host key, our key); only warn if it is unreachable."""
    from ci.gerrit import GerritClient  # paramiko: only the commands that talk to Gerrit

    client = GerritClient(config.gerrit, timeout=15)
    try:
        client.connect().close()
    except GerritRefused as exc:
        click.echo(f"error: {path}: Gerrit refuses this configuration: {exc}", err=True)
        raise SystemExit(2) from None
    except GerritError as exc:
        logging.getLogger("hyperv-ci").warning("Gerrit cannot be reached now (%s); "
                                               "going on, it is retried", exc)


def sessions_of(config: Config) -> sessionmaker[Session]:
    """Sessions on the configured database, its schema checked (for one-shot commands)."""
    engine = make_engine(config.database.sqlalchemy_url())
    ensure_schema(engine)
    return make_sessionmaker(engine)
