"""Login, logout, the session cookie, the secret key, public_read and the reverse
proxy's header (dashboard/auth.py, dashboard/secret_key.py)."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from ci import accounts
from ci.config import Config
from ci.models import AuditEntry, Node
from dashboard import create_app
from dashboard.auth import LOGIN_LIMIT, LoginLimit
from dashboard.secret_key import SECRET_KEY_ENV, load_or_create
from dashboard.server import start_in_thread
from tests.dashboard.conftest import CSRF_RE, OPERATOR_NAME, OPERATOR_PASSWORD, make_config

pytestmark = pytest.mark.usefixtures("fast_hashes")


def token_of(client: FlaskClient, path: str = "/login") -> str:
    match = CSRF_RE.search(client.get(path).get_data(as_text=True))
    assert match, f"no CSRF field on {path}"
    return match.group(1)


def log_in(client: FlaskClient, name: str = OPERATOR_NAME,
           password: str = OPERATOR_PASSWORD, next_: str = "/nodes") -> Any:
    return client.post("/login", data={"csrf_token": token_of(client), "name": name,
                                       "password": password, "next": next_})


def test_login_then_logout(client: FlaskClient, world: Any, operator_account: str) -> None:
    assert "Log in" in client.get("/").get_data(as_text=True)
    response = log_in(client)
    assert response.status_code == 303 and response.headers["Location"] == "/nodes"
    page = client.get("/nodes").get_data(as_text=True)
    assert f"Logged in as {OPERATOR_NAME}." in page
    assert 'class="whoami">opérateur Zoë</span>' in page
    # Logout is a POST with the token: a link (GET) or a forged form cannot do it.
    assert client.get("/logout").status_code == 405
    assert client.post("/logout", data={"csrf_token": "forged"}).status_code == 400
    response = client.post("/logout", data={"csrf_token": token_of(client, "/nodes")})
    assert response.status_code == 303
    assert "Log in" in client.get("/").get_data(as_text=True)
    with client.session_transaction() as browser_session:
        assert "user" not in browser_session


def test_wrong_password_and_unknown_name_answer_alike(client: FlaskClient, world: Any,
                                                      operator_account: str) -> None:
    wrong = log_in(client, password="not the password at all")
    unknown = log_in(client, name="nobody at all")
    assert wrong.status_code == unknown.status_code == 401
    for response in (wrong, unknown):
        assert "Wrong name or password." in response.get_data(as_text=True)
    with client.session_transaction() as browser_session:
        assert "user" not in browser_session


def test_login_needs_the_csrf_token(client: FlaskClient, operator_account: str) -> None:
    client.get("/login")
    response = client.post("/login", data={"name": OPERATOR_NAME,
                                           "password": OPERATOR_PASSWORD})
    assert response.status_code == 400


def test_login_rotates_the_session(client: FlaskClient, world: Any,
                                   operator_account: str) -> None:
    before = token_of(client)
    with client.session_transaction() as browser_session:
        browser_session["planted"] = "by an attacker"
    assert log_in(client).status_code == 303
    after = token_of(client, "/nodes")
    assert after != before
    with client.session_transaction() as browser_session:
        assert "planted" not in browser_session
        assert browser_session["user"] == OPERATOR_NAME
    # The pre-login token no longer works for an action.
    assert client.post("/nodes/hv-1/drain", data={"csrf_token": before}).status_code == 400


def test_a_removed_or_disabled_account_loses_its_session(
        client: FlaskClient, world: Any, operator_account: str,
        dash_sessions: sessionmaker[Session]) -> None:
    assert log_in(client).status_code == 303
    token = token_of(client, "/nodes")
    with dash_sessions() as s, s.begin():
        accounts.set_disabled(s, OPERATOR_NAME, True)
    response = client.post("/nodes/hv-1/drain", data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"].startswith("/login")
    with dash_sessions() as s:
        assert not s.scalar(select(Node.drained).where(Node.name == "hv-1"))


def test_login_rate_limit_per_address_and_name(client: FlaskClient, app: Flask,
                                               operator_account: str) -> None:
    limit: LoginLimit = app.extensions[LOGIN_LIMIT]
    for _ in range(limit.allowed):
        assert log_in(client, password="wrong password, again").status_code == 401
    # Even the right password waits now: the limit is checked before any hashing.
    refused = log_in(client)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert "Too many failed logins" in refused.get_data(as_text=True)
    # Another name from the same address is not locked out with it.
    assert log_in(client, name="someone else", password="x" * 12).status_code == 401


def test_the_limit_forgets_after_its_window() -> None:
    now = [1000.0]
    limit = LoginLimit(allowed=2, window=60, clock=lambda: now[0])
    limit.failed("10.0.0.1", "a")
    limit.failed("10.0.0.1", "a")
    assert limit.blocked_for("10.0.0.1", "a") == pytest.approx(60)
    assert limit.blocked_for("10.0.0.2", "a") == 0
    now[0] += 61
    assert limit.blocked_for("10.0.0.1", "a") == 0
    limit.failed("10.0.0.1", "a")
    limit.succeeded("10.0.0.1", "a")
    assert limit.blocked_for("10.0.0.1", "a") == 0


# -- the cookie ---------------------------------------------------------------------------------

def _cookie_header(response: Any) -> str:
    [cookie] = [v for k, v in response.headers.items() if k == "Set-Cookie"]
    return str(cookie)


def test_cookie_flags(client: FlaskClient, operator_account: str) -> None:
    cookie = _cookie_header(log_in(client))
    assert cookie.startswith("hyperv_ci_session=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
    https = client.get("/login", base_url="https://ci.example.org")
    assert "Secure" in _cookie_header(https)


def test_cookie_secure_when_configured(tmp_path: Path, dash_sessions: sessionmaker[Session],
                                       operator_account: str) -> None:
    config = make_config(tmp_path)
    config = config.model_copy(update={"dashboard": config.dashboard.model_copy(
        update={"cookie_secure": True})})
    app = create_app(config, sessions=dash_sessions, test_config={"TESTING": True})
    # Behind a TLS-terminating proxy the request reaching us is http.
    assert "Secure" in _cookie_header(app.test_client().get("/login"))


# -- the secret key -----------------------------------------------------------------------------

def test_the_key_is_made_once_0600_and_survives_a_restart(
        tmp_path: Path, dash_sessions: sessionmaker[Session], operator_account: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_KEY_ENV, raising=False)
    config = make_config(tmp_path)
    key_file = config.dashboard.secret_key_file
    assert key_file is not None and not key_file.exists()
    first = create_app(config, sessions=dash_sessions, test_config={"TESTING": True})
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    browser = first.test_client()
    assert log_in(browser).status_code == 303
    # A restarted dashboard (a new app, the same file) knows the same session.
    second = create_app(config, sessions=dash_sessions, test_config={"TESTING": True})
    assert second.config["SECRET_KEY"] == first.config["SECRET_KEY"]
    cookie = browser.get_cookie("hyperv_ci_session")
    assert cookie is not None
    again = second.test_client()
    again.set_cookie("hyperv_ci_session", cookie.value)
    assert 'class="whoami">opérateur Zoë' in again.get("/").get_data(as_text=True)
    # A different key (another file) does not.
    (tmp_path / "elsewhere").mkdir()
    other = make_config(tmp_path / "elsewhere")
    stranger = create_app(other, sessions=dash_sessions, test_config={"TESTING": True})
    client = stranger.test_client()
    client.set_cookie("hyperv_ci_session", cookie.value)
    assert "whoami\">" not in client.get("/").get_data(as_text=True)


def test_a_short_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("short\n", encoding="utf-8")
    os.chmod(path, 0o600)
    with pytest.raises(Exception, match="shorter than"):
        load_or_create(path)


# -- public_read: false -------------------------------------------------------------------------

@pytest.fixture
def private_config(tmp_path: Path) -> Config:
    config = make_config(tmp_path)
    return config.model_copy(update={"dashboard": config.dashboard.model_copy(
        update={"public_read": False})})


def test_private_dashboard_needs_login_to_read(private_config: Config, world: Any,
                                               dash_sessions: sessionmaker[Session],
                                               operator_account: str) -> None:
    client = create_app(private_config, sessions=dash_sessions,
                        test_config={"TESTING": True}).test_client()
    for path in ("/", f"/builds/{world.finished_id}", "/changes/1001", "/nodes", "/audit",
                 "/logs/"):
        response = client.get(path)
        assert response.status_code == 303, path
        assert response.headers["Location"].startswith("/login?next="), path
    api = client.get("/api/status")
    assert api.status_code == 401 and api.get_json() == {"error": "login required"}
    # Open: load balancers, Prometheus, the login page, the stylesheet.
    for path in ("/healthz", "/metrics", "/login", "/static/dashboard.css"):
        assert client.get(path).status_code == 200, path
    assert log_in(client, next_="/").status_code == 303
    assert client.get("/").status_code == 200
    assert client.get("/api/status").status_code == 200


# -- the reverse proxy --------------------------------------------------------------------------

@pytest.fixture
def proxy_config(tmp_path: Path) -> Config:
    config = make_config(tmp_path)
    auth = config.dashboard.auth.model_validate(
        {"mode": "proxy", "header": "X-Remote-User",
         "trusted_proxies": ["10.0.0.2", "192.168.7.0/24", "127.0.0.1"]})
    return config.model_copy(update={"dashboard": config.dashboard.model_copy(
        update={"auth": auth})})


@pytest.fixture
def proxy_app(proxy_config: Config, dash_sessions: sessionmaker[Session]) -> Flask:
    return create_app(proxy_config, sessions=dash_sessions, test_config={"TESTING": True})


def _drain_as(app: Flask, peer: str, headers: dict[str, str]) -> Any:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = peer
    page = client.get("/nodes", headers=headers).get_data(as_text=True)
    match = CSRF_RE.search(page)
    assert match
    return client.post("/nodes/hv-1/drain", headers=headers,
                       data={"csrf_token": match.group(1)})


def _drained(dash_sessions: sessionmaker[Session]) -> bool:
    with dash_sessions() as s:
        return bool(s.scalar(select(Node.drained).where(Node.name == "hv-1")))


def test_proxy_header_from_a_trusted_proxy(proxy_app: Flask, world: Any,
                                           dash_sessions: sessionmaker[Session]) -> None:
    response = _drain_as(proxy_app, "192.168.7.40", {"X-Remote-User": "sso.Ünïcode"})
    assert response.status_code == 303 and response.headers["Location"] == "/nodes"
    assert _drained(dash_sessions)
    with dash_sessions() as s:
        entry = s.scalars(select(AuditEntry)).one()
        assert (entry.actor, entry.auth, entry.source, entry.action) == (
            "sso.Ünïcode", "proxy", "192.168.7.40", "drain")


def test_proxy_header_from_anywhere_else_is_ignored(proxy_app: Flask, world: Any,
                                                    dash_sessions: sessionmaker[Session]
                                                    ) -> None:
    for peer in ("10.0.0.3", "192.168.8.1", "::1"):
        response = _drain_as(proxy_app, peer, {"X-Remote-User": "mallory"})
        assert response.status_code == 303, peer
        assert response.headers["Location"].startswith("/login"), peer
    assert not _drained(dash_sessions)
    with dash_sessions() as s:
        assert s.scalar(select(func.count()).select_from(AuditEntry)) == 0


def test_proxy_mode_takes_no_password_logins(proxy_app: Flask, world: Any,
                                             operator_account: str) -> None:
    client = proxy_app.test_client()
    assert "single sign-on" in client.get("/login").get_data(as_text=True)
    token = token_of(client, "/nodes")
    response = client.post("/login", data={"csrf_token": token, "name": OPERATOR_NAME,
                                           "password": OPERATOR_PASSWORD})
    assert response.status_code == 404


def test_a_disabled_local_account_is_refused_through_the_proxy(
        proxy_app: Flask, world: Any, operator_account: str,
        dash_sessions: sessionmaker[Session]) -> None:
    with dash_sessions() as s, s.begin():
        accounts.set_disabled(s, OPERATOR_NAME, True)
    response = _drain_as(proxy_app, "10.0.0.2", {"X-Remote-User": OPERATOR_NAME})
    assert response.headers["Location"].startswith("/login")
    assert not _drained(dash_sessions)


def test_proxy_mode_needs_its_addresses(tmp_path: Path) -> None:
    from ci.config import ConfigError, parse_config

    raw = make_config(tmp_path).model_dump(mode="json")
    raw["dashboard"]["auth"] = {"mode": "proxy"}
    with pytest.raises(ConfigError, match="trusted_proxies"):
        parse_config(raw)
    raw["dashboard"]["auth"] = {"mode": "proxy", "trusted_proxies": ["10.0.0.1/8"]}
    with pytest.raises(ConfigError):  # host bits set: a typo, not a network
        parse_config(raw)
    raw["dashboard"]["auth"] = {"mode": "proxy", "header": "X_Remote_User",
                                "trusted_proxies": ["10.0.0.1"]}
    with pytest.raises(ConfigError):  # waitress drops such headers: it would never arrive
        parse_config(raw)


@pytest.fixture
def served_proxy(proxy_app: Flask) -> Iterator[int]:
    server, _thread, port = start_in_thread(proxy_app, "127.0.0.1", 0)
    yield port
    server.close()


def _raw_get(port: int, header_line: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\n{header_line}\r\n"
                     "Connection: close\r\n\r\n".encode("latin-1"))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def test_waitress_drops_an_underscore_twin_of_the_header(served_proxy: int, world: Any) -> None:
    # 127.0.0.1 is a trusted proxy here; a client that reaches us through a proxy
    # which strips only "X-Remote-User" might send "X_Remote_User" (the same WSGI
    # key, HTTP_X_REMOTE_USER). waitress drops underscored names: no one is logged in.
    assert "Signed in by the site's proxy as" in _raw_get(
        served_proxy, "X-Remote-User: real-user")
    sneaky = _raw_get(served_proxy, "X_Remote_User: mallory")
    assert "mallory" not in sneaky and "this request did not come" in sneaky


def test_compose_keeps_the_session_key_on_a_volume() -> None:
    import json

    from ci.config import load_config
    from tests.test_compose import CI_CONFIG, COMPOSE_FILE, run_compose

    result = run_compose(COMPOSE_FILE, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    dashboard = json.loads(result.stdout)["services"]["dashboard"]
    key_file = load_config(CI_CONFIG).dashboard.secret_key_file
    assert key_file is not None
    volumes = {v["target"]: v for v in dashboard["volumes"]}
    assert volumes[str(key_file.parent)]["type"] == "volume"
    # The anchor's mounts are still there (a service's `volumes` replaces the anchor's).
    assert {"/etc/hyperv-ci", "/srv/hyperv-ci/logs"} <= set(volumes)


def test_next_is_only_ever_a_path_of_this_site(client: FlaskClient, world: Any,
                                               operator_account: str) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example",
                   "/\t/evil.example", "/\n/evil.example", "javascript:alert(1)", "évil"):
        response = log_in(client, next_=target)
        assert response.headers["Location"] == "/", repr(target)
    assert log_in(client, next_="/changes/1001?x=é").headers["Location"].startswith(
        "/changes/1001?x=")


def test_healthz_answers_503_for_a_logged_in_browser_too(dash_config: Config) -> None:
    # A load balancer reusing an operator's cookie, or a private dashboard: /healthz
    # must not look the user up (that would be a 500 when the database is down).
    from ci.db import make_engine, make_sessionmaker

    sessions = make_sessionmaker(make_engine("postgresql+psycopg://hypervci@127.0.0.1:1/x"))
    private = dash_config.model_copy(update={"dashboard": dash_config.dashboard.model_copy(
        update={"public_read": False})})
    client = create_app(private, sessions=sessions,
                        test_config={"TESTING": True}).test_client()
    with client.session_transaction() as browser_session:
        browser_session["user"] = OPERATOR_NAME
    assert client.get("/healthz").status_code == 503


def test_at_most_two_password_checks_run_at_once(app: Flask, world: Any,
                                                 operator_account: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Each check waits (up to 1 s) for all four logins to be inside at once: without
    # the limit they are, at once; with it, at most two ever are.
    import threading

    lock, everyone_in = threading.Lock(), threading.Event()
    inside, most = [0], [0]

    in_transaction: list[bool] = []

    def slow_check(found: Any, password: str) -> accounts.Checked:
        from dashboard.context import db

        in_transaction.append(db().in_transaction())  # no lock held while hashing
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            if inside[0] == 4:
                everyone_in.set()
        everyone_in.wait(1.0)
        with lock:
            inside[0] -= 1
        return accounts.Checked(None)

    monkeypatch.setattr(accounts, "check", slow_check)
    clients = [app.test_client() for _ in range(4)]
    tokens = [token_of(c) for c in clients]
    threads = [threading.Thread(target=c.post, args=("/login",), kwargs={"data": {
        "csrf_token": t, "name": f"user {i}", "password": "x" * 12}})
        for i, (c, t) in enumerate(zip(clients, tokens, strict=True))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert most[0] == 2
    assert in_transaction == [False] * 4


def test_login_upgrades_an_old_hash(client: FlaskClient, dash_sessions: sessionmaker[Session],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from ci.models import User

    weak = accounts._HASHER.hash(OPERATOR_PASSWORD)  # the fast test parameters
    with dash_sessions() as s, s.begin():
        s.add(User(name=OPERATOR_NAME, password_hash=weak, role="operator", disabled=False))
    monkeypatch.setattr(accounts, "_HASHER", PasswordHasher())  # the product's
    assert log_in(client).status_code == 303
    with dash_sessions() as s:
        stored = s.scalar(select(User.password_hash).where(User.name == OPERATOR_NAME))
    assert stored != weak and not accounts._HASHER.check_needs_rehash(stored)


def test_a_database_down_is_a_500_page_for_a_logged_in_browser(dash_config: Config) -> None:
    from ci.db import make_engine, make_sessionmaker

    sessions = make_sessionmaker(make_engine("postgresql+psycopg://hypervci@127.0.0.1:1/x"))
    client = create_app(dash_config, sessions=sessions).test_client()
    with client.session_transaction() as browser_session:
        browser_session["user"] = OPERATOR_NAME
    page = client.get("/nodes")
    # The error page renders (as logged out), not a second failure inside it.
    assert page.status_code == 500 and "<nav>" in page.get_data(as_text=True)


def test_the_dashboard_makes_the_unknown_names_hash_when_it_starts(
        tmp_path: Path, dash_sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    monkeypatch.setattr(accounts, "dummy_hash", lambda: made.append("made") or "unused")
    create_app(make_config(tmp_path), sessions=dash_sessions, test_config={"TESTING": True})
    assert made == ["made"]  # before any login, so the first one costs what the others do
