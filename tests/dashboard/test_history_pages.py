"""/builds, /changes/<n>, /tests, /tests/<id>, /flaky, /charts: content, links,
escaping, refusals, and how many SQL statements each page sends."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html import unescape
from urllib.parse import quote, unquote

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from tests.history_seed import (
    ALWAYS_FAILS,
    HOSTILE_NODE,
    RECHECK_FLAKY,
    RERUN_FLAKY,
    HistoryWorld,
    seed_history,
)
from tests.sql_statements import sent_statements

SVG = "{http://www.w3.org/2000/svg}"
# The statements each page may send with 7 builds, 6 tests and 3 nodes seeded.
# A lazy load per row would add one per build (or test) shown and fail these.
QUERY_BUDGET = {
    "/builds": 3,  # the page of builds (with patchset and change), their nodes, the node list
    "/builds?node=hv-1&job=hyperv-local": 3,
    "/changes/2001": 6,  # change, patchsets, builds, max patchset... nodes, failed tests
    "/tests": 2,  # the aggregate, the last failures' builds
    f"/tests/{quote(RECHECK_FLAKY)}": 1,
    "/flaky": 1,  # one statement (ci/test_history.flaky_tests)
    "/charts": 0,  # the page only names its images
    "/charts/pass-rate.svg": 1,
    "/charts/queue.svg": 1,
    "/charts/nodes.svg": 1,
    f"/charts/test.svg?id={quote(RECHECK_FLAKY)}": 1,
    "/api/builds": 2,
    "/api/changes/2001": 5,
    "/api/tests": 2,
    "/api/flaky": 1,
    "/api/charts": 3,  # day counts, queue spans, nodes
}


@pytest.fixture
def history(dash_sessions: sessionmaker[Session]) -> HistoryWorld:
    return seed_history(dash_sessions)


def page(client: FlaskClient, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status)
    return response.get_data(as_text=True)


def links(html: str) -> list[str]:
    """Every link target, unescaped and percent-decoded (so a test id reads as itself)."""
    return [unquote(unescape(h)) for h in re.findall(r'(?:href|src)="([^"]*)"', html)]


def test_builds_page_lists_filters_and_links(client: FlaskClient,
                                             history: HistoryWorld) -> None:
    b = history.builds
    html = page(client, "/builds")
    assert [int(i) for i in re.findall(r'<tr data-build-id="(\d+)"', html)] == [
        b["f"], b["e"], b["d"], b["b2"], b["c"], b["b"], b["a"]]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
    assert "hv-节点-&lt;b&gt;1&lt;/b&gt;" in html  # the node name, escaped
    found = links(html)
    assert f"/builds/{b['a']}" in found and "/changes/2001" in found
    assert f"/builds?node={HOSTILE_NODE}" in found  # node -> its builds
    assert "/builds?node=hv-1" in found

    filtered = page(client, "/builds?" + "&".join([
        "project=openstack/compute-hyperv", "job=hyperv-local", "result=failed",
        f"node={quote(HOSTILE_NODE)}", "branch=", "since=", "until="]))
    assert re.findall(r'<tr data-build-id="(\d+)"', filtered) == [str(b["b"])]
    assert 'value="hyperv-local" selected' in filtered  # the form shows the filter


def test_older_links_walk_the_whole_history(client: FlaskClient,
                                            history: HistoryWorld) -> None:
    seen: list[int] = []
    path: str | None = "/builds?job=hyperv-local&limit=2"
    while path:
        html = page(client, path)
        seen += [int(i) for i in re.findall(r'<tr data-build-id="(\d+)"', html)]
        older = re.search(r'<a class="next" href="([^"]+)"', html)
        path = unescape(older.group(1)) if older else None
        if path:
            assert "job=hyperv-local" in path and "limit=2" in path  # kept on every page
    b = history.builds
    assert seen == [b["e"], b["d"], b["b2"], b["b"], b["a"]]


@pytest.mark.parametrize(("path", "message"), [
    ("/builds?result=won", "unknown result"),
    ("/builds?change=1;DROP", "change number"),
    ("/builds?since=soon", "not a date"),
    ("/builds?after=bm90IGEgY3Vyc29y", "cursor"),
    ("/builds?limit=-1", "limit"),
    ("/api/builds?after=%00", "cursor"),
    ("/tests?sort=random", "sort"),
    ("/tests?window=0", "window"),
    ("/flaky?days=9999", "days"),
    ("/charts?by=owner", "by must be"),
    ("/charts/queue.svg?days=x", "days"),
])
def test_bad_parameters_are_a_400_that_says_which(client: FlaskClient, path: str,
                                                  message: str) -> None:
    response = client.get(path)
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)


def test_change_page_shows_nodes_and_failed_tests(client: FlaskClient,
                                                  history: HistoryWorld) -> None:
    html = page(client, "/changes/2001")
    found = links(html)
    assert f"/tests/{ALWAYS_FAILS}" in found  # failed test -> its history
    assert f"/tests/{RECHECK_FLAKY}" in found
    assert "/builds?change=2001" in found
    assert "/builds?node=hv-1" in found


def test_tests_page_and_one_tests_history(client: FlaskClient,
                                          history: HistoryWorld) -> None:
    html = page(client, "/tests")
    assert "tempest.api.network.test_ports_ü[id-2,&lt;smoke&gt;]" in html
    assert f"/tests/{RECHECK_FLAKY}" in links(html)
    assert f"/builds/{history.builds['b2']}" in links(html)  # ALWAYS_FAILS's last failure

    b = history.builds
    test_page = page(client, f"/tests/{quote(RECHECK_FLAKY)}")
    rows = re.findall(r'<tr data-build-id="(\d+)" class="([^"]*)"', test_page)
    assert [(int(i), css) for i, css in rows] == [
        (b["d"], ""), (b["b2"], "failed"), (b["c"], "failed"), (b["b"], ""), (b["a"], "failed")]
    assert "Traceback: tempest.api.network.test_ports_ü[id-2,&lt;smoke&gt;] &lt;b&gt;failed" in (
        test_page)
    assert f"/charts/test.svg?id={RECHECK_FLAKY}" in links(test_page)
    assert client.get("/tests/no.such.test").status_code == 404


def test_flaky_page(client: FlaskClient, history: HistoryWorld) -> None:
    html = page(client, "/flaky")
    rows = re.findall(r'<td><a href="([^"]+)">([^<]*)</a></td>\s*<td class="num">(\d+)</td>',
                      html)
    assert [(unescape(name), int(flips)) for _, name, flips in rows] == [
        (RECHECK_FLAKY, 2), (RERUN_FLAKY, 1)]
    assert f"/builds/{history.builds['b2']}" in links(html)
    assert "No flaky test" in page(client, "/flaky?days=1")


def test_charts_are_svg_images_with_escaped_labels(client: FlaskClient,
                                                   history: HistoryWorld) -> None:
    html = page(client, "/charts?days=7&by=project")
    images = re.findall(r'<img class="chart" data-chart="([^"]+)" src="([^"]+)"', html)
    assert [kind for kind, _ in images] == ["pass-rate", "duration", "queue", "nodes"]
    for kind, src in images:
        response = client.get(unescape(src))
        assert response.status_code == 200 and response.mimetype == "image/svg+xml"
        root = ET.fromstring(response.data)  # noqa: S314 - our own output; must be well-formed
        assert root.tag == f"{SVG}svg"
        assert not [e for e in root.iter() if "style" in e.attrib]  # CSP: no inline style
        labels = {e.text for e in root.iter(f"{SVG}text")}
        if kind == "nodes":
            assert HOSTILE_NODE in labels  # shown as text, escaped in the markup
            assert b"&lt;b&gt;1&lt;/b&gt;" in response.data
        if kind == "pass-rate":
            assert {"openstack/compute-hyperv", "openstack/nova"} <= labels
    assert client.get("/charts/pie.svg").status_code == 404


@pytest.mark.parametrize("path", list(QUERY_BUDGET))
def test_statements_per_page(client: FlaskClient, history: HistoryWorld,
                             dash_sessions: sessionmaker[Session], path: str) -> None:
    client.get(path)  # warm: the first request of an app may read what it caches
    with sent_statements(dash_sessions.kw["bind"]) as sent:
        response = client.get(path)
    # Queries only: SQLite's BEGIN (pysqlite sends it as a statement) is no query.
    seen = [s for s in sent if not s.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK"))]
    assert response.status_code == 200
    assert len(seen) <= QUERY_BUDGET[path], "\n".join(seen)


def test_build_and_node_pages_link_to_the_histories(client: FlaskClient,
                                                    history: HistoryWorld) -> None:
    found = links(page(client, f"/builds/{history.builds['a']}"))
    assert f"/tests/{ALWAYS_FAILS}" in found and f"/tests/{RERUN_FLAKY}" in found
    assert "/builds?node=hv-1" in found and "/builds?node=devstack-1" in found
    assert f"/builds?node={HOSTILE_NODE}" in links(page(client, "/nodes"))


def test_api_pages_link_to_the_api(client: FlaskClient, history: HistoryWorld) -> None:
    seen: list[int] = []
    path: str | None = "/api/builds?project=openstack/compute-hyperv&limit=3"
    while path:
        body = client.get(path).get_json()
        seen += [b["id"] for b in body["builds"]]
        path = body["next_url"]
        assert path is None or path.startswith("/api/builds?")
    b = history.builds
    assert seen == [b["b2"], b["c"], b["b"], b["a"]]
