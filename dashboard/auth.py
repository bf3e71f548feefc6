"""Who is asking: login, logout, the session, the reverse proxy's user, and the
rules for reading and acting.

- Local mode: accounts of ci/accounts.py (`hyperv-ci users add`); the login
  form puts the name in Flask's signed session cookie. Each request checks the
  account still exists and is not disabled, so `users remove` or `disable`
  ends its sessions at once.
- Proxy mode: a reverse proxy that authenticates (SSO) names the user in a
  header (`dashboard.auth.header`). The header is believed ONLY when the
  request's peer address — the TCP connection's, REMOTE_ADDR — is one of
  `trusted_proxies`; from any other address it is ignored. waitress leaves
  REMOTE_ADDR as the peer because the server configures no `trusted_proxy`
  (dashboard/server.py), and it drops every header whose name has "_"
  (waitress/parser.py), so `X_Remote_User` cannot pose as `X-Remote-User`.
  Proxy users need no local account (they are recorded by name); a local
  account of the same name that is disabled is refused.

Reading is public unless `dashboard.public_read` is false; /healthz, /metrics,
/login and the static files are always open. Every action needs an operator.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.wrappers import Response

from ci import accounts
from ci.audit import Actor
from dashboard.context import check_csrf, config, db, new_csrf_token

logger = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

SESSION_USER = "user"
SESSION_LIFETIME = timedelta(hours=12)  # idle sessions end; each request renews it
# Open even when reading needs a login: load balancers, Prometheus, the login itself.
OPEN_BLUEPRINTS = frozenset({"auth", "health", "metrics"})
LOGIN_FAILURES_ALLOWED = 10  # per address and name, within the window
LOGIN_WINDOW_SECONDS = 300.0
LOGIN_LIMIT = "hyperv_ci_login_limit"  # the app's LoginLimit, in app.extensions
# Password checks at once, per process: each Argon2id check takes 64 MiB and a
# core for a moment; a flood of logins (one per made-up name gets past the rate
# limit) then waits here instead of starving the pages of memory and CPU.
_PASSWORD_CHECKS = threading.BoundedSemaphore(2)


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, Secure as configured: always, never, or
    (`dashboard.cookie_secure: null`) when the request itself is https."""

    def get_cookie_secure(self, app: Flask) -> bool:
        configured = config().dashboard.cookie_secure
        return request.is_secure if configured is None else configured


def configure(app: Flask) -> None:
    """Install the session settings, the per-request identity check and the blueprint."""
    accounts.dummy_hash()  # made now, so the first login is no slower than the others
    app.session_interface = CookieSessions()
    app.config.setdefault("PERMANENT_SESSION_LIFETIME", SESSION_LIFETIME)
    app.extensions[LOGIN_LIMIT] = LoginLimit()
    app.before_request(_identify)
    app.before_request(_guard_reading)
    app.jinja_env.globals["current_actor"] = current_actor
    app.register_blueprint(bp)


# -- who is asking ------------------------------------------------------------------------------

def peer_address() -> str:
    """The TCP peer of this request (a proxy's address when behind one)."""
    return request.remote_addr or ""


def current_actor() -> Actor | None:
    """The logged-in user of this request (cached per request), or None."""
    if "actor" not in g:
        try:
            _identify()
        except SQLAlchemyError:
            # Only an error page gets here (before_request failed on this very
            # lookup): it renders as logged out rather than failing again.
            g.actor = None
    actor: Actor | None = g.actor
    return actor


def _identify() -> None:
    """First thing in every request: who is asking. The lookup's transaction is
    ended at once, so the request's session is free for an action's own
    `session.begin()` (and SQLite's write lock, which every transaction takes
    here (ci/db.py), is not held while the page renders). /healthz, /metrics
    and the static files need no one: they do not read the users table (a
    health check must answer 503 for a database down, not fail here)."""
    if request.endpoint == "static" or request.blueprint in {"health", "metrics"}:
        g.actor = None
        return
    g.actor = _resolve_actor()
    db().rollback()


def _resolve_actor() -> Actor | None:
    auth = config().dashboard.auth
    if auth.mode == "proxy":
        return _proxy_actor()
    name = session.get(SESSION_USER)
    if not isinstance(name, str):
        return None
    account = _find_account(name)
    if account is None or not account.may_act:
        session.pop(SESSION_USER, None)  # removed or disabled since it logged in
        return None
    return Actor(account.name, "local", peer_address())


def _find_account(name: str) -> accounts.Account | None:
    return accounts.find(db(), name)


def _proxy_actor() -> Actor | None:
    auth = config().dashboard.auth
    value = request.headers.get(auth.header)
    if value is None:
        return None
    if not auth.trusts(peer_address()):
        logger.warning("ignored %s header from untrusted address %s", auth.header,
                       peer_address())
        return None
    try:
        name = accounts.check_name(value)
    except accounts.AccountError:
        return None
    local = _find_account(name)
    if local is not None and local.disabled:
        return None
    return Actor(name, "proxy", peer_address())


def wants_json() -> bool:
    """A script (the JSON API, or Accept: application/json), not a browser page."""
    return request.path.startswith("/api/") or request.accept_mimetypes.best_match(
        ["text/html", "application/json"]) == "application/json"


def refuse_anonymous() -> ResponseReturnValue:
    """401 for a script; for a browser, the login page and back here afterwards."""
    if wants_json():
        return jsonify({"error": "login required"}), 401
    if request.method == "GET":
        back = request.full_path
        flash("Log in to read this dashboard.", "warning")
    else:
        back = _form_next()
        flash("Only a logged-in operator may do that: log in first.", "warning")
    return redirect(url_for("auth.login", next=back), code=303)


def require_operator() -> ResponseReturnValue | None:
    """Before an action: None if an operator asks, else the refusal."""
    actor = current_actor()
    if actor is None:
        return refuse_anonymous()
    return None


def _guard_reading() -> ResponseReturnValue | None:
    """With `public_read: false`, every page but the open ones needs a login."""
    if config().dashboard.public_read or request.endpoint is None:
        return None
    if request.endpoint == "static" or request.blueprint in OPEN_BLUEPRINTS:
        return None
    return None if current_actor() is not None else refuse_anonymous()


def _form_next() -> str:
    target = request.form.get("next", "")
    return target if is_local_path(target) else url_for("pages.status")


def is_local_path(target: str) -> bool:
    """Only a path on this site: never another host (an open redirect). Browsers
    drop tabs and newlines from a URL and read a backslash as a slash, so
    "/<tab>/evil" is "//evil": refused, with every other control or space."""
    return (target.startswith("/") and not target.startswith("//") and "\\" not in target
            and not any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7f for ch in target))


# -- the login rate limit -----------------------------------------------------------------------

@dataclass
class LoginLimit:
    """Failed logins per (address, name) in a sliding window, in this process.

    Keyed by name as well as address: behind a TLS proxy every login comes from
    the proxy's address, and one attacker must not lock every operator out.
    """

    allowed: int = LOGIN_FAILURES_ALLOWED
    window: float = LOGIN_WINDOW_SECONDS
    clock: Callable[[], float] = time.monotonic
    _failures: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def blocked_for(self, address: str, name: str) -> float:
        """Seconds until another attempt is allowed (0: allowed now)."""
        now = self.clock()
        with self._lock:
            recent = [t for t in self._failures.get((address, name), []) if t > now - self.window]
            if len(recent) < self.allowed:
                return 0.0
            return recent[0] + self.window - now

    def failed(self, address: str, name: str) -> None:
        now = self.clock()
        with self._lock:
            if len(self._failures) > 10_000:  # bounded memory: forget the old ones
                self._failures = {k: v for k, v in self._failures.items()
                                  if v and v[-1] > now - self.window}
            recent = [t for t in self._failures.get((address, name), []) if t > now - self.window]
            self._failures[(address, name)] = [*recent, now][-self.allowed:]

    def succeeded(self, address: str, name: str) -> None:
        with self._lock:
            self._failures.pop((address, name), None)


def _limit() -> LoginLimit:
    limit: LoginLimit = current_app.extensions[LOGIN_LIMIT]
    return limit


# -- the pages ----------------------------------------------------------------------------------

def _login_page(status: int = 200, name: str = "",
                headers: dict[str, str] | None = None) -> ResponseReturnValue:
    target = request.values.get("next", "")
    page = render_template("login.html", mode=config().dashboard.auth.mode, name=name,
                           next=target if is_local_path(target) else "")
    return page, status, headers or {}


@bp.get("/login")
def login() -> ResponseReturnValue:
    """The login form (local mode), or who the proxy says you are (proxy mode)."""
    return _login_page()


@bp.post("/login")
def login_submit() -> ResponseReturnValue:
    """Check the name and password; on success a fresh session, then back to `next`."""
    check_csrf()
    if config().dashboard.auth.mode != "local":
        abort(404, description="sign-in is done by the site's proxy")
    name = request.form.get("name", "")[:accounts.MAX_NAME_LENGTH * 4]
    password = request.form.get("password", "")
    address = peer_address()
    wait = _limit().blocked_for(address, name)
    if wait > 0:
        retry = int(wait) + 1
        flash(f"Too many failed logins: try again in {retry} s.", "error")
        return _login_page(429, name, {"Retry-After": str(retry)})
    with db().begin():
        found = accounts.stored(db(), name)
    # The check runs in no transaction: SQLite's write lock, which every
    # transaction takes here (ci/db.py), is not held while Argon2 works.
    with _PASSWORD_CHECKS:
        outcome = accounts.check(found, password)
    account = outcome.account
    if account is not None and outcome.new_hash is not None:
        with db().begin():
            accounts.store_hash(db(), account.name, outcome.new_hash)
    if account is None:
        _limit().failed(address, name)
        logger.warning("failed dashboard login from %s", address)
        flash("Wrong name or password.", "error")
        return _login_page(401, name)
    _limit().succeeded(address, name)
    # A new session: nothing from before the login (a planted token) survives it.
    session.clear()
    session.permanent = True
    session[SESSION_USER] = account.name
    new_csrf_token()
    logger.info("dashboard login: %s from %s", account.name, address)
    flash(f"Logged in as {account.name}.", "ok")
    target = request.form.get("next", "")
    return redirect(target if is_local_path(target) else url_for("pages.status"), code=303)


@bp.post("/logout")
def logout() -> Response:
    """End the session (POST with the CSRF token: a link cannot log anyone out)."""
    check_csrf()
    name = session.get(SESSION_USER)
    session.clear()
    new_csrf_token()
    if name:
        logger.info("dashboard logout: %s", name)
    flash("Logged out.", "ok")
    return redirect(url_for("pages.status"), code=303)
