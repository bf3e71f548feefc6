"""`/healthz`: whether the dashboard can serve, for a container healthcheck.

200 `ok` when the database answers `SELECT 1` through the app's own session;
503 with the error's class otherwise (never the message: it may carry the
database URL). No page data is read, so it stays cheap at any interval.
"""

from __future__ import annotations

import logging

from flask import Blueprint
from flask.typing import ResponseReturnValue
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from dashboard.context import db

logger = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    try:
        db().execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        logger.warning("healthz: the database does not answer: %s", type(exc).__name__)
        return f"database unavailable ({type(exc).__name__})\n", 503, {
            "Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}
    return "ok\n", 200, {"Content-Type": "text/plain; charset=utf-8",
                         "Cache-Control": "no-store"}
