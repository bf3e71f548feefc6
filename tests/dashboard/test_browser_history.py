"""The history, tests, flaky and chart pages in headless Chromium (Debian's), served by
waitress on loopback: no console error or CSP refusal, the charts load as images,
links lead where they say; screenshots go to tests/artifacts/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
from sqlalchemy.orm import Session, sessionmaker

from ci.config import Config
from dashboard import create_app
from dashboard.server import start_in_thread
from tests.history_seed import HOSTILE_NODE, RECHECK_FLAKY, SUBJECT, HistoryWorld, seed_history

pytestmark = pytest.mark.browser

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
    return create_app(dash_config, sessions=dash_sessions)


@pytest.fixture
def history(dash_sessions: sessionmaker[Session]) -> HistoryWorld:
    return seed_history(dash_sessions)


@pytest.fixture
def base_url(app: Flask, history: HistoryWorld) -> Iterator[str]:
    server, _thread, port = start_in_thread(app, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}"
    server.close()


@pytest.fixture
def page(browser: Browser, base_url: str) -> Iterator[Page]:
    # Needs base_url so the browser closes first: requests still in flight then
    # end aborted, not refused by a server already gone.
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(5000)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))

    def console(message: ConsoleMessage) -> None:
        # CSP refusals and failed loads are console errors, not page errors.
        if message.type == "error":
            problems.append(f"console: {message.text}")

    page.on("console", console)

    def failed(request: Any) -> None:
        # A load cut short by the next navigation (net::ERR_ABORTED) is no fault.
        if "ERR_ABORTED" not in (request.failure or ""):
            problems.append(f"failed: {request.url} {request.failure}")

    page.on("requestfailed", failed)
    yield page
    context.close()
    assert problems == []


def shoot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_history_pages_render_and_link(page: Page, base_url: str,
                                       history: HistoryWorld) -> None:
    page.goto(base_url + "/")
    page.get_by_role("link", name="Builds", exact=True).click()
    expect(page).to_have_url(base_url + "/builds")
    rows = page.locator("table.history tbody tr")
    expect(rows).to_have_count(len(history.builds))
    expect(rows.first).to_contain_text("queued")
    expect(page.locator("table.history")).to_contain_text(SUBJECT)  # as text, <script> and all
    shoot(page, "builds")

    page.select_option("select[name=node]", HOSTILE_NODE)
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(2)
    page.get_by_role("link", name="2001,1").first.click()
    expect(page).to_have_url(base_url + "/changes/2001")
    page.get_by_role("link", name=RECHECK_FLAKY).first.click()
    expect(page.locator("h1")).to_have_text(RECHECK_FLAKY)
    chart = page.locator("img.chart")
    expect(chart).to_have_js_property("complete", True)
    assert chart.evaluate("img => img.naturalWidth") > 0  # the SVG decoded as an image
    page.locator("table.test-history tr.failed a").first.click()
    expect(page).to_have_url(f"{base_url}/builds/{history.builds['b2']}")


def test_tests_flaky_and_charts_pages(page: Page, base_url: str, history: HistoryWorld) -> None:
    page.goto(base_url + "/")
    page.get_by_role("link", name="Tests", exact=True).click()
    expect(page.locator("table.tests-stats tbody tr")).to_have_count(5)
    shoot(page, "tests")
    page.get_by_role("link", name="Flaky", exact=True).click()
    expect(page.locator("table.flaky tbody tr").first).to_contain_text(RECHECK_FLAKY)
    shoot(page, "flaky")
    page.get_by_role("link", name="Charts", exact=True).click()
    images = page.locator("img.chart")
    expect(images).to_have_count(4)
    for index in range(4):
        image = images.nth(index)
        expect(image).to_have_js_property("complete", True)
        assert image.evaluate("img => img.naturalWidth") > 0, image.get_attribute("src")
    shoot(page, "charts")
