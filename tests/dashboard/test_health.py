"""dashboard/health.py: `/healthz` answers 200 while the database does, 503 when not."""

from __future__ import annotations

from flask.testing import FlaskClient

from ci.config import Config
from ci.db import make_engine, make_sessionmaker
from dashboard import create_app


def test_healthz_ok(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_data(as_text=True) == "ok\n"
    assert response.headers["Cache-Control"] == "no-store"


def test_healthz_503_when_the_database_does_not_answer(dash_config: Config) -> None:
    # Nothing listens on port 1: the connection is refused at once.
    url = "postgresql+psycopg://hypervci@127.0.0.1:1/hypervci"
    sessions = make_sessionmaker(make_engine(url))
    app = create_app(dash_config, sessions=sessions, test_config={"TESTING": True})
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    body = response.get_data(as_text=True)
    assert body.startswith("database unavailable (OperationalError)")
    assert "127.0.0.1" not in body  # the error's class only, never its text
