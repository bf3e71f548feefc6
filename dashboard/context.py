"""Per-request access to the configuration, a database session and the CSRF token.

The blueprints reach the app's state through these helpers (never through
module globals), so two apps in one process — the demo and a test — stay apart.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from flask import abort, current_app, g, request, session
from sqlalchemy.orm import Session, sessionmaker

from ci.config import Config

EXTENSION = "hyperv_ci"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class DashboardState:
    """What create_app hands to every request."""

    config: Config
    sessions: sessionmaker[Session]


def state() -> DashboardState:
    """The current app's configuration and session factory."""
    return current_app.extensions[EXTENSION]


def config() -> Config:
    """The validated hyperv-ci configuration of the current app."""
    return state().config


def db() -> Session:
    """The request's database session (opened on first use, closed at teardown)."""
    if "db_session" not in g:
        g.db_session = state().sessions()
    return g.db_session


def close_db(_exc: BaseException | None = None) -> None:
    """Teardown hook: roll back anything uncommitted and give the connection back."""
    session_ = g.pop("db_session", None)
    if session_ is not None:
        session_.close()


def csrf_token() -> str:
    """The token the browser session must echo in every POST form."""
    token = session.get(CSRF_FIELD)
    if not token:
        token = secrets.token_urlsafe(32)
        session[CSRF_FIELD] = token
    return token


def new_csrf_token() -> str:
    """Replace the session's token (at login and logout: no token outlives them)."""
    session.pop(CSRF_FIELD, None)
    return csrf_token()


def check_csrf() -> None:
    """Refuse (400) a POST whose form token is missing or not this session's."""
    expected = session.get(CSRF_FIELD)
    sent = request.form.get(CSRF_FIELD, "")
    # As bytes: compare_digest refuses non-ASCII str (a forged token must be a 400, not a 500).
    if not expected or not sent or not hmac.compare_digest(expected.encode(), sent.encode()):
        abort(400, description="missing or invalid CSRF token; reload the page and try again")
