"""The dashboard: a Flask app over the same database the listener and workers use.

`create_app` is the factory; pages, the JSON API, POST actions and the log
tree are separate blueprints. Everything shown comes from Gerrit or from
build output, so it is untrusted: Jinja autoescapes it and nothing is ever
marked safe.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response
from jinja2 import StrictUndefined
from sqlalchemy.orm import Session, sessionmaker

from ci.config import Config
from ci.db import ensure_schema, make_engine, make_sessionmaker
from ci.report_format import format_duration as report_duration
from dashboard.context import EXTENSION, DashboardState, close_db, csrf_token
from dashboard.secret_key import secret_key

logger = logging.getLogger(__name__)

# Pages load only our own script and stylesheet: an injected <script> would not run.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def create_app(
    config: Config,
    *,
    sessions: sessionmaker[Session] | None = None,
    test_config: dict[str, Any] | None = None,
) -> Flask:
    """Build the dashboard app; opens (and upgrades) its own database unless given sessions."""
    app = Flask(__name__)
    app.config.from_mapping(
        SESSION_COOKIE_NAME="hyperv_ci_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=64 * 1024,  # the forms are a token and a field or two
        REFRESH_SECONDS=5,  # status page auto-refresh
        LIVE_POLL_SECONDS=2,  # a running build's page polls its JSON this often
    )
    if test_config:
        app.config.from_mapping(test_config)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = secret_key(config.dashboard)
    if sessions is None:
        engine = make_engine(config.database.sqlalchemy_url())
        ensure_schema(engine)
        sessions = make_sessionmaker(engine)
    app.extensions[EXTENSION] = DashboardState(config=config, sessions=sessions)

    app.json.ensure_ascii = False  # type: ignore[attr-defined]  # UTF-8 JSON, not \u escapes
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep test counts in order
    app.jinja_env.undefined = StrictUndefined
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.filters["duration"] = format_duration
    app.jinja_env.filters["when"] = format_when
    app.jinja_env.filters["web_url"] = web_url
    app.teardown_appcontext(close_db)

    @app.after_request
    def _headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    from dashboard import actions, api, audit_page, auth, health, logs, metrics, pages

    auth.configure(app)  # sessions, who is asking, /login and /logout
    app.register_blueprint(audit_page.bp)

    from dashboard import polish

    polish.install(app)  # the favicon, the 404/500 pages, relative times
    app.register_blueprint(pages.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(actions.bp)
    app.register_blueprint(logs.bp)
    from dashboard import verdict_view  # the build page's verdict panel (docs/verdict.md)
    app.register_blueprint(verdict_view.bp)
    from dashboard import charts_view, history, tests_view  # history, tests, charts (B2)
    for blueprint in (history.bp, tests_view.bp, charts_view.bp):
        app.register_blueprint(blueprint)
    bind = sessions.kw.get("bind")
    logger.info("dashboard app created (database %s)",
                bind.url.render_as_string(hide_password=True) if bind is not None else "?")
    return app


def format_duration(seconds: float | None) -> str:
    """The reports' `1h 02m 03s` shape; an empty string for no value."""
    return "" if seconds is None else report_duration(seconds)


def format_when(value: str | None) -> str:
    """An ISO timestamp as `YYYY-MM-DD HH:MM:SS UTC`."""
    if not value:
        return ""
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S UTC")


def web_url(value: str | None) -> str:
    """An http(s) URL from Gerrit as a link target; anything else (javascript:) becomes '#'."""
    if value and urlsplit(value).scheme in ("http", "https"):
        return value
    return "#"
