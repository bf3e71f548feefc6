"""The favicon, the styled 404/500 pages and relative times with absolute ones on hover."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from ci.config import Config
from dashboard import create_app


def test_the_favicon_is_served_at_the_root_and_linked(client: FlaskClient) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response.mimetype == "image/vnd.microsoft.icon"
    assert response.data[:4] == b"\x00\x00\x01\x00"  # an ICO header: reserved 0, type 1
    assert response.data[22:26] == b"\x89PNG"  # its one image, a PNG
    html = client.get("/nodes").get_data(as_text=True)
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in html
    svg = client.get("/static/favicon.svg")
    assert svg.status_code == 200 and svg.mimetype == "image/svg+xml"


@pytest.mark.parametrize("path", ["/no/such/page", "/builds/999999", "/changes/424242"])
def test_not_found_is_a_page_with_the_navigation(client: FlaskClient, world: Any,
                                                 path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    html = response.get_data(as_text=True)
    assert "<title>404 Not Found · hyperv-ci</title>" in html
    assert '<nav>' in html and 'href="/nodes"' in html  # the navigation, as on every page
    assert 'href="/">status page</a>' in html


def test_the_api_keeps_answering_json(client: FlaskClient) -> None:
    for path in ("/api/builds/999999", "/api/no-such-endpoint"):
        response = client.get(path)
        assert response.status_code == 404 and response.is_json, path
        assert "error" in response.get_json()


def test_a_failing_page_is_a_styled_500_without_the_traceback(
        dash_config: Config, dash_sessions: Any, caplog: pytest.LogCaptureFixture) -> None:
    app: Flask = create_app(dash_config, sessions=dash_sessions)  # not TESTING: handlers run

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("secret internals 内部")

    @app.get("/api/boom")
    def api_boom() -> str:
        raise RuntimeError("secret internals 内部")

    client = app.test_client()
    response = client.get("/boom")
    assert response.status_code == 500
    html = response.get_data(as_text=True)
    assert "500 · Internal Server Error" in html and "<nav>" in html
    assert "secret internals" not in html
    assert "secret internals 内部" in caplog.text  # the operator finds it in the log
    api = client.get("/api/boom")
    assert api.status_code == 500 and api.is_json and "secret" not in api.get_data(as_text=True)


def test_times_are_relative_with_the_absolute_time_on_hover(client: FlaskClient,
                                                             world: Any) -> None:
    html = client.get(f"/builds/{world.finished_id}").get_data(as_text=True)
    times = re.findall(r'<time datetime="([^"]+)" title="([^"]+)">([^<]+)</time>', html)
    assert len(times) >= 3
    for iso, absolute, relative in times:
        assert iso.endswith("+00:00")  # machine-readable, UTC
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", absolute), absolute
        assert relative in ("just now",) or relative.endswith("ago"), relative
    status = client.get("/").get_data(as_text=True)
    assert re.search(r'<td><time datetime="[^"]+" title="[^"]+ UTC">just now</time></td>',
                     status)
