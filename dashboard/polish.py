"""The finish of every page: the favicon, styled error pages, relative times.

`install(app)` is called by the app factory (dashboard.create_app).
"""

from __future__ import annotations

import logging
from datetime import datetime

from flask import (
    Flask,
    Response,
    current_app,
    jsonify,
    render_template,
    request,
    send_from_directory,
)
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, InternalServerError

from ci.models import utcnow

logger = logging.getLogger(__name__)

FAVICON = "favicon.ico"


def install(app: Flask) -> None:
    """Register the favicon route, the error pages and the `ago` filter on `app`."""
    app.jinja_env.filters["ago"] = ago
    app.add_url_rule("/favicon.ico", "favicon", favicon)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(InternalServerError, server_error)


def favicon() -> Response:
    """Browsers ask for /favicon.ico whatever the page links: the icon in static/."""
    folder = current_app.static_folder
    if folder is None:
        raise RuntimeError("the dashboard app has no static folder")
    return send_from_directory(folder, FAVICON, mimetype="image/vnd.microsoft.icon",
                               max_age=86400)


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.path in ("/healthz", "/metrics")


def http_error(error: HTTPException) -> ResponseReturnValue:
    """A 4xx/5xx raised by a view (abort) or by routing: a page with the navigation,
    or JSON for the API."""
    code = error.code or 500
    if code >= 500:
        return server_error(error)
    if _wants_json():
        return jsonify({"error": error.description or error.name}), code
    return render_template("error.html", code=code, title=error.name,
                           description=error.description or ""), code


def server_error(error: Exception) -> ResponseReturnValue:
    """An unexpected failure: logged with its traceback, shown without it."""
    original = getattr(error, "original_exception", None) or error
    if not isinstance(original, HTTPException):
        logger.error("dashboard error on %s", request.path, exc_info=original)
    description = "The dashboard failed to show this page; the error is in its log."
    if _wants_json():
        return jsonify({"error": description}), 500
    try:
        return render_template("error.html", code=500, title="Internal Server Error",
                               description=description), 500
    except Exception:  # the layout itself failed: plain text still says what happened
        logger.exception("the error page could not be rendered")
        return Response(description + "\n", status=500, mimetype="text/plain")


def ago(value: str | None, now: datetime | None = None) -> str:
    """An ISO timestamp as `3 min ago` (`in 2 min` ahead); '' for none."""
    if not value:
        return ""
    seconds = ((now or utcnow()) - datetime.fromisoformat(value)).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 45:
        return "just now"
    for size, unit in ((86400 * 365, "year"), (86400 * 30, "month"), (86400, "day"),
                       (3600, "hour")):
        if seconds >= size * 0.95:
            count = round(seconds / size)
            text = f"{count} {unit}" + ("s" if count != 1 else "")
            break
    else:
        text = f"{max(1, round(seconds / 60))} min"
    return f"in {text}" if future else f"{text} ago"
