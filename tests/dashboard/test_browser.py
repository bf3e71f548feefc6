"""The dashboard in headless Chromium (Debian's), served by waitress on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci.config import Config
from ci.models import Build, BuildState, BuildStep, StepState, utcnow
from dashboard import create_app
from dashboard.server import start_in_thread
from tests.dashboard.conftest import OPERATOR_PASSWORD

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def app(dash_config: Config, dash_sessions: sessionmaker[Session]) -> Flask:
    # Poll fast so the live view shows an update within the test's wait.
    return create_app(dash_config, sessions=dash_sessions,
                      test_config={"LIVE_POLL_SECONDS": 0.2, "REFRESH_SECONDS": 0.5})


@pytest.fixture
def base_url(app: Flask) -> Iterator[str]:
    server, thread, port = start_in_thread(app, "127.0.0.1", 0)
    assert thread.is_alive()
    yield f"http://127.0.0.1:{port}"
    server.close()
    assert not thread.is_alive()


@pytest.fixture
def page(browser: Browser, base_url: str) -> Iterator[Page]:
    # Set up after base_url, so torn down before it: the page never polls a server
    # that has already gone (a console error).
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(5000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == []  # no script error on any page


def test_status_to_build_page_with_live_output(page: Page, base_url: str, world: Any,
                                               dash_sessions: sessionmaker[Session]) -> None:
    page.goto(base_url + "/")
    row = page.locator(f'table.running tr[data-build-id="{world.running_id}"]')
    expect(row).to_contain_text(world.SUBJECT)  # shown as text, <script> and all
    expect(row).to_contain_text("stack.sh")
    row.get_by_role("link", name=f"#{world.running_id}").click()

    expect(page).to_have_url(f"{base_url}/builds/{world.running_id}")
    steps = page.locator("tbody.step")
    expect(steps).to_have_count(2)
    expect(steps.nth(1)).to_contain_text("stack.sh")
    tail = page.locator(f'pre[data-tail-for="{world.running_step_id}"]')
    expect(tail).to_contain_text("starting nova-compute 开始")

    with dash_sessions() as s, s.begin():
        step = s.get(BuildStep, world.running_step_id)
        step.output_tail += "nova-compute 已启动 <b>up</b>\n"
    expect(tail).to_contain_text("nova-compute 已启动 <b>up</b>")

    with dash_sessions() as s, s.begin():
        step = s.get(BuildStep, world.running_step_id)
        step.state, step.exit_code, step.finished_at = StepState.SUCCEEDED, 0, utcnow()
    expect(steps.nth(1).locator(".step-state")).to_have_text("succeeded")
    expect(steps.nth(1).locator(".step-exit")).to_have_text("0")


def test_status_page_refreshes_itself(page: Page, base_url: str, world: Any,
                                      dash_sessions: sessionmaker[Session]) -> None:
    page.goto(base_url + "/")
    queued = page.locator(f'table.queued tr[data-build-id="{world.queued_id}"]')
    expect(queued).to_contain_text(world.NOVA_OWNER)
    with dash_sessions() as s, s.begin():
        s.get(Build, world.queued_id).state = BuildState.ABORTED
        s.get(Build, world.queued_id).finished_at = utcnow()
    expect(queued).to_have_count(0)
    expect(page.locator(f'table.recent tr[data-build-id="{world.queued_id}"]')).to_contain_text(
        "aborted")


def test_recheck_button_queues_a_build(page: Page, base_url: str, world: Any,
                                       dash_sessions: sessionmaker[Session],
                                       operator_account: str) -> None:
    # Actions need an operator (test_browser_auth.py tests the refusals).
    page.goto(f"{base_url}/login")
    page.get_by_label("Name").fill(operator_account)
    page.get_by_label("Password").fill(OPERATOR_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    # Patchset 1 is outdated: its build page sends the reviewer to the change.
    page.goto(f"{base_url}/builds/{world.finished_id}")
    expect(page.get_by_role("button", name="Recheck")).to_have_count(0)
    page.get_by_role("link", name="recheck it there").click()
    expect(page).to_have_url(f"{base_url}/changes/1001")
    page.get_by_role("button", name="Recheck").click()
    expect(page).to_have_url(f"{base_url}/changes/1001")
    expect(page.locator(".flash.ok")).to_contain_text("Queued hyperv-local")
    with dash_sessions() as s:
        rechecked = s.scalars(select(Build).where(Build.reason == "manual recheck")).all()
        assert [(b.job, b.patchset.number, b.state) for b in rechecked] == [
            ("hyperv-local", 2, BuildState.QUEUED), ("hyperv-extra", 2, BuildState.QUEUED)]
