"""The build page: verdict and failures first, then steps, then the tests a page at a time."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask.testing import FlaskClient
from markupsafe import escape
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from ci.models import TestResult
from dashboard.data import FAILURES_SHOWN, TESTS_PER_PAGE

TESTS = 1500
FAILED = 40
TRACEBACK = ("Traceback (most recent call last):\n"
             + "  File \"tempest/api/compute/servers/test_servers.py\", line 42, in test\n" * 12
             + "tempest.lib.exceptions.BuildErrorException: 实例 'vm-ü' <failed>\n")


@pytest.fixture
def big_build(world: Any, dash_sessions: sessionmaker[Session]) -> int:
    """The world's finished build with a full tempest run: 1,500 tests, 40 failed."""
    failing = set(range(7, TESTS, TESTS // FAILED)[:FAILED])
    rows = [{"build_id": world.finished_id,
             "test_id": f"tempest.api.compute.servers.test_servers.ServersTest."
                        f"test_{i:04d}_名前[id-{i:08x}-aaaa-bbbb-cccc-000000000000,smoke]",
             "status": "fail" if i in failing else "success",
             "duration": i / 100,
             "details": TRACEBACK if i in failing else ""}
            for i in range(TESTS)]
    with dash_sessions() as s, s.begin():
        s.execute(insert(TestResult), rows)
    return world.finished_id


def test_a_1500_test_build_page_is_small_and_failures_come_first(
        client: FlaskClient, big_build: int) -> None:
    response = client.get(f"/builds/{big_build}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    # Before: every test inline, 313 KB for 1,500 tests (issue 12).
    assert len(response.data) < 100_000, len(response.data)
    failures = html.index("<h3>Failures</h3>")
    assert failures < html.index("<h2>Steps</h2>") < html.index('<h2 id="tests">Tests</h2>')
    assert html.index('class="verdict') < failures
    shown = html[failures:html.index("<h2>Steps</h2>")]
    assert shown.count('<pre class="traceback">') == FAILURES_SHOWN
    assert escape("BuildErrorException: 实例 'vm-ü' <failed>") in shown  # open, escaped
    assert f"All {FAILED + 1} failures" in shown  # the world's own failure too
    assert "fail: 41" in html and f"success: {TESTS - FAILED + 1}" in html
    assert f"page 1 of {-(-(TESTS + 3) // TESTS_PER_PAGE)}" in html
    assert html.count("<tr><td>tempest.") <= TESTS_PER_PAGE


def test_the_tests_are_paged_and_filtered(client: FlaskClient, big_build: int) -> None:
    html = client.get(f"/builds/{big_build}?tests_page=2").get_data(as_text=True)
    rows = re.findall(r"<tr><td>(tempest\.[^<]+)</td><td>(\w+)</td>", html)
    assert len(rows) == TESTS_PER_PAGE
    first = client.get(f"/builds/{big_build}").get_data(as_text=True)
    first_rows = re.findall(r"<tr><td>(tempest\.[^<]+)</td><td>(\w+)</td>", first)
    assert not set(rows) & set(first_rows)
    assert first_rows[0][1] == "fail"  # failures head the list, as in the API
    assert f'href="/builds/{big_build}?tests_page=3#tests"' in html
    assert f'href="/builds/{big_build}#tests"' in html  # back to page 1
    only = client.get(f"/builds/{big_build}?tests_status=fail").get_data(as_text=True)
    statuses = {s for _, s in re.findall(r"<tr><td>(tempest\.[^<]+)</td><td>(\w+)</td>", only)}
    assert statuses == {"fail"} and "Only fail" in only
    body = client.get(f"/api/builds/{big_build}").get_json()
    assert body["tests_page"] == {"page": 1, "pages": 16, "per_page": TESTS_PER_PAGE,
                                  "total": TESTS + 3, "status": None}
    assert len(body["tests"]) == TESTS_PER_PAGE and len(body["failures"]) == FAILURES_SHOWN


@pytest.mark.parametrize("query", ["tests_page=0", "tests_page=x", "tests_status=nope",
                                   "tests_page=-1"])
def test_a_forged_page_is_a_400(client: FlaskClient, world: Any, query: str) -> None:
    response = client.get(f"/builds/{world.finished_id}?{query}")
    assert response.status_code == 400
    assert "<nav>" in response.get_data(as_text=True)  # the styled error page


def test_a_page_past_the_end_shows_the_last(client: FlaskClient, big_build: int) -> None:
    html = client.get(f"/builds/{big_build}?tests_page=999").get_data(as_text=True)
    assert "page 16 of 16" in html


def test_the_tempest_step_shows_its_progress(client: FlaskClient, world: Any,
                                            dash_sessions: sessionmaker[Session]) -> None:
    from ci.models import BuildStep

    with dash_sessions() as s, s.begin():
        step = s.get(BuildStep, world.running_step_id)
        step.tests_done, step.tests_passed, step.tests_failed = 7, 6, 1
        step.current_test = "tempest.api.network.test_网络<i>"
    html = client.get(f"/builds/{world.running_id}").get_data(as_text=True)
    box = html.split(f'data-progress-for="{world.running_step_id}"', 1)[1].split("</p>", 1)[0]
    assert "hidden" not in box.split(">", 1)[0]
    assert '<span class="progress-done">7</span>' in box
    assert '<span class="progress-failed">1</span>' in box
    assert "tempest.api.network.test_网络&lt;i&gt;" in box
    step_json = client.get(f"/api/builds/{world.running_id}").get_json()["steps"][-1]
    assert step_json["progress"] == {"done": 7, "passed": 6, "failed": 1,
                                     "current": "tempest.api.network.test_网络<i>"}
    # A step without progress has its box hidden (the script shows it when counts come).
    other = html.split('data-progress-for="', 1)[1].split(">", 1)[0]
    assert "hidden" in other
