"""/builds and /api/builds keyset pages both ways: Older (after=) then Newer (before=)
give the same pages, on SQLite and PostgreSQL, and stay put while builds arrive."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from html import unescape

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from ci.models import Build, BuildState, Patchset, utcnow
from tests.history_seed import HistoryWorld, seed_history


@pytest.fixture
def dash_sessions(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """Both engines (the conftest's default is SQLite only)."""
    return sessions


@pytest.fixture
def history(dash_sessions: sessionmaker[Session]) -> HistoryWorld:
    return seed_history(dash_sessions)


Page = tuple[list[int], str | None, str | None]  # its builds, the Older and Newer links


def html_page(client: FlaskClient, path: str) -> Page:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status)
    html = response.get_data(as_text=True)
    ids = [int(i) for i in re.findall(r'<tr data-build-id="(\d+)"', html)]
    older = re.search(r'<a class="next" href="([^"]+)"', html)
    newer = re.search(r'<a class="prev" href="([^"]+)"', html)
    return (ids, unescape(older.group(1)) if older else None,
            unescape(newer.group(1)) if newer else None)


def api_page(client: FlaskClient, path: str) -> Page:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status)
    body = response.get_json()
    return [b["id"] for b in body["builds"]], body["next_url"], body["prev_url"]


@pytest.mark.parametrize(("fetch", "start"), [
    (html_page, "/builds?job=hyperv-local&limit=2"),
    (api_page, "/api/builds?job=hyperv-local&limit=2"),
])
def test_older_then_newer_walks_back_through_the_same_pages(
        client: FlaskClient, history: HistoryWorld, fetch: Callable[[FlaskClient, str], Page],
        start: str) -> None:
    forward: list[list[int]] = []
    path: str | None = start
    newest_newer: str | None = "unset"
    last_newer: str | None = None
    while path:
        ids, older, newer = fetch(client, path)
        if not forward:
            newest_newer = newer
        forward.append(ids)
        last_newer = newer
        path = older
    assert newest_newer is None  # the newest page has nothing newer
    b = history.builds
    assert forward == [[b["e"], b["d"]], [b["b2"], b["b"]], [b["a"]]]
    backward: list[list[int]] = [forward[-1]]
    path = last_newer
    while path:
        assert "job=hyperv-local" in path and "limit=2" in path and "before=" in path
        ids, _older, newer = fetch(client, path)
        backward.append(ids)
        path = newer
    assert backward[::-1] == forward


def test_newer_is_a_keyset_page_while_builds_arrive(client: FlaskClient, history: HistoryWorld,
                                                    dash_sessions: sessionmaker[Session]
                                                    ) -> None:
    first = client.get("/api/builds?job=hyperv-local&limit=2").get_json()
    second = client.get(first["next_url"]).get_json()
    with dash_sessions() as s, s.begin():
        a = s.get(Build, history.builds["a"])
        assert a is not None and isinstance(a.patchset, Patchset)
        s.add(Build(patchset=a.patchset, job="hyperv-local", state=BuildState.QUEUED,
                    created_at=utcnow() + timedelta(minutes=5)))
    # An offset would now shift by the new build; the cursor names the rows.
    back = client.get(second["prev_url"]).get_json()
    assert [x["id"] for x in back["builds"]] == [x["id"] for x in first["builds"]]
    assert back["prev_url"] is not None  # and the new build is above it
    newest = client.get(back["prev_url"]).get_json()
    assert len(newest["builds"]) == 1 and newest["prev_url"] is None


@pytest.mark.parametrize("query", ["before=bm90IGEgY3Vyc29y", "before=%00",
                                   "after={c}&before={c}"])
def test_a_forged_or_double_cursor_is_a_400(client: FlaskClient, history: HistoryWorld,
                                            query: str) -> None:
    cursor = client.get("/api/builds?limit=1").get_json()["next_cursor"]
    for base in ("/builds", "/api/builds"):
        response = client.get(f"{base}?{query.format(c=cursor)}")
        assert response.status_code == 400
        assert "cursor" in response.get_data(as_text=True) or "one" in response.get_data(
            as_text=True)
