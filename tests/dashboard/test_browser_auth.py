"""Login and authority in headless Chromium (Debian's), served by waitress on loopback:
an operator logs in, rechecks and aborts, and the audit shows them; logged out the
same buttons lead to the login page and change nothing; an excluded change's page
offers no plain Recheck. Screenshots go to tests/artifacts/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.config import Config
from ci.models import AuditEntry, Build, BuildState
from dashboard import create_app
from dashboard.server import start_in_thread
from tests.dashboard.conftest import OPERATOR_NAME, OPERATOR_PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("fast_hashes")]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def app(dash_config: Config, dash_sessions: sessionmaker[Session]) -> Flask:
    return create_app(dash_config, sessions=dash_sessions,
                      test_config={"LIVE_POLL_SECONDS": 0.2, "REFRESH_SECONDS": 0.5})


@pytest.fixture
def base_url(app: Flask) -> Iterator[str]:
    server, _thread, port = start_in_thread(app, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}"
    server.close()


@pytest.fixture
def errors() -> list[str]:
    """Script errors and console errors of the page (a test removes an expected one)."""
    return []


@pytest.fixture
def page(browser: Browser, base_url: str, errors: list[str]) -> Iterator[Page]:
    # Set up after base_url, so torn down before it: the page never polls a server
    # that has already gone (a console error).
    context = browser.new_context()
    page = context.new_page()
    # Waits on conditions, never sleeps: a generous bound costs nothing when the
    # page is quick, and a loaded 2-core machine (several suites at once) is not.
    page.set_default_timeout(15_000)
    expect.set_options(timeout=15_000)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("dialog", lambda dialog: dialog.accept())  # the Abort / Force confirmations
    yield page
    expect.set_options(timeout=5000)  # Playwright's default, for the other modules
    context.close()
    assert errors == []


def log_in_from(page: Page, base_url: str, path: str) -> None:
    page.goto(base_url + path)
    page.get_by_role("link", name="Log in", exact=True).click()
    page.get_by_label("Name").fill(OPERATOR_NAME)
    page.get_by_label("Password").fill(OPERATOR_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(base_url + path)  # back where the operator was
    expect(page.locator("header .whoami")).to_have_text(OPERATOR_NAME)


def _state(sessions: sessionmaker[Session]) -> tuple[Any, ...]:
    with sessions() as s:
        builds = s.execute(select(Build.id, Build.state, Build.abort_requested)
                           .order_by(Build.id)).all()
        return tuple(builds), s.scalar(select(func.count()).select_from(AuditEntry))


def test_login_then_recheck_and_abort_are_recorded(
        page: Page, base_url: str, world: Any, operator_account: str,
        dash_sessions: sessionmaker[Session]) -> None:
    log_in_from(page, base_url, f"/builds/{world.running_id}")
    page.get_by_role("button", name="Abort").click()
    # The flash may be gone already: the live page reloads itself once the build's
    # state changes. What stays is the build's own heading and its audit row.
    expect(page.get_by_role("heading", level=1)).to_contain_text(
        f"Build #{world.running_id} aborted")
    actions = page.locator(".audit-partial tbody tr")
    expect(actions.filter(has_text="abort")).to_contain_text(OPERATOR_NAME)

    page.goto(f"{base_url}/changes/1001")
    page.get_by_role("button", name="Recheck").click()
    expect(page.locator(".flash.ok")).to_contain_text("Queued hyperv-local")

    page.get_by_role("link", name="Audit").click()
    rows = page.locator("table.audit tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("recheck")
    expect(rows.nth(1)).to_contain_text("abort")
    for i in range(2):
        expect(rows.nth(i).locator(".audit-actor")).to_have_text(OPERATOR_NAME)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "audit.png"), full_page=True)
    with dash_sessions() as s:
        assert s.get(Build, world.running_id).state == BuildState.ABORTED
        rechecked = s.scalars(select(Build.job).where(Build.reason == "manual recheck")).all()
        assert sorted(rechecked) == ["hyperv-extra", "hyperv-local"]

    page.get_by_role("button", name="Log out").click()
    expect(page.locator(".flash.ok")).to_contain_text("Logged out.")
    expect(page.get_by_role("link", name="Log in", exact=True)).to_be_visible()


def test_logged_out_the_buttons_lead_to_login_and_change_nothing(
        page: Page, base_url: str, world: Any, operator_account: str,
        dash_sessions: sessionmaker[Session], errors: list[str]) -> None:
    before = _state(dash_sessions)
    page.goto(f"{base_url}/builds/{world.running_id}")
    page.get_by_role("button", name="Abort").click()
    expect(page).to_have_url(f"{base_url}/login?next=/builds/{world.running_id}")
    expect(page.locator(".flash.warning")).to_have_text(
        "Only a logged-in operator may do that: log in first.")
    expect(page.get_by_label("Password")).to_be_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "login.png"), full_page=True)

    page.goto(f"{base_url}/changes/1001")
    page.get_by_role("button", name="Recheck").click()
    expect(page).to_have_url(f"{base_url}/login?next=/changes/1001")
    page.goto(f"{base_url}/nodes")
    page.locator('tr[data-node="hv-1"]').get_by_role("button", name="Drain").click()
    expect(page).to_have_url(f"{base_url}/login?next=/nodes")
    assert _state(dash_sessions) == before

    # A wrong password keeps it that way.
    page.get_by_label("Name").fill(OPERATOR_NAME)
    page.get_by_label("Password").fill("not the password at all")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator(".flash.error")).to_have_text("Wrong name or password.")
    expect(page.locator("header .whoami")).to_have_count(0)
    # The refused login answers 401, which Chromium logs: the one console error expected.
    assert [e for e in errors if "401" in e] and all("401" in e for e in errors)
    errors.clear()


def test_an_unwatched_project_offers_neither_button(
        page: Page, base_url: str, world: Any, operator_account: str,
        dash_sessions: sessionmaker[Session]) -> None:
    with dash_sessions() as s, s.begin():
        queue.upsert_patchset(s, queue.ChangeInfo(
            number=3001, project="openstack/compute-hyperv", branch="master", patchset=1,
            subject="watched whole", files=("README.rst",)))
        queue.upsert_patchset(s, queue.ChangeInfo(
            number=3002, project="openstack/neutron", branch="master", patchset=1,
            subject="not watched", files=("neutron/agent.py",)))
    page.goto(f"{base_url}/changes/3002")
    expect(page.get_by_role("button", name="Recheck")).to_have_count(0)
    expect(page.get_by_role("button", name="Force build")).to_have_count(0)
    page.goto(f"{base_url}/changes/3001")
    expect(page.get_by_role("button", name="Recheck")).to_have_count(1)


@pytest.fixture
def filtered_config(dash_config: Config) -> Config:
    """nova watched only for nova/virt/hyperv/ (as a real CI is)."""
    projects = [p.model_copy(update={"files": ["^nova/virt/hyperv/"]})
                if p.name == "openstack/nova" else p for p in dash_config.projects]
    return dash_config.model_copy(update={"projects": projects})


def test_force_build_is_the_only_way_for_an_excluded_change(
        browser: Browser, filtered_config: Config, world: Any, operator_account: str,
        dash_sessions: sessionmaker[Session]) -> None:
    app = create_app(filtered_config, sessions=dash_sessions)
    server, _thread, port = start_in_thread(app, "127.0.0.1", 0)
    base_url = f"http://127.0.0.1:{port}"
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    expect.set_options(timeout=15_000)
    page.on("dialog", lambda dialog: dialog.accept())
    try:
        with dash_sessions() as s, s.begin():
            queue.upsert_patchset(s, queue.ChangeInfo(
                number=3003, project="openstack/nova", branch="master", patchset=1,
                subject="Fix the libvirt driver — ünïcode", files=("nova/virt/libvirt/driver.py",)))
        page.goto(f"{base_url}/changes/3003")
        expect(page.get_by_role("button", name="Recheck")).to_have_count(0)
        expect(page.get_by_role("button", name="Force build")).to_have_count(0)
        expect(page.locator(".excluded")).to_contain_text("Touches none of the watched files")
        log_in_from(page, base_url, "/changes/3003")
        expect(page.get_by_role("button", name="Recheck")).to_have_count(0)
        page.get_by_role("button", name="Force build").click()
        expect(page.locator(".flash.ok")).to_contain_text(
            f"the vote will say it was forced by {OPERATOR_NAME}")
        with dash_sessions() as s:
            forced = s.scalars(select(Build).where(Build.forced_by == OPERATOR_NAME)).all()
            assert [(b.job, b.patchset.change.number) for b in forced] == [("hyperv-local", 3003)]
    finally:
        expect.set_options(timeout=5000)
        context.close()
        server.close()
