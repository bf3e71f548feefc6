"""Live tempest progress in Chromium: a slow simulated tempest run over real sshd, and
the build page's counts moving while it goes on (the worker's SFTP follow of the
subunit files -> the step row -> /api/builds/<id> -> the page's script)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci.config import Config
from ci.models import BuildStep, StepState
from dashboard import create_app
from dashboard.server import start_in_thread
from tests.dashboard.test_browser import ARGS, CHROMIUM
from tests.runners.conftest import executor, ssh_node, sshd  # noqa: F401 - fixtures
from tests.runners.test_tempest_step import make_job, node, run_step  # noqa: F401 - node

pytestmark = [pytest.mark.browser, pytest.mark.sshd]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
MISSING = "/builds/987654"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def base_url(dash_config: Config, dash_sessions: sessionmaker[Session]) -> Iterator[str]:
    app: Flask = create_app(dash_config, sessions=dash_sessions,
                            test_config={"LIVE_POLL_SECONDS": 0.2})
    server, thread, port = start_in_thread(app, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}"
    server.close()
    thread.join(timeout=5)


@pytest.fixture
def page(browser: Browser, base_url: str) -> Iterator[Page]:
    # After base_url in setup, so before it in teardown: the page's polling never
    # meets a server that has already gone (a console error, ERR_CONNECTION_REFUSED).
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def on_console(msg: Any) -> None:
        # The one 404 a test asks for on purpose is not an error of the page.
        if msg.type == "error" and MISSING not in msg.location.get("url", ""):
            errors.append(msg.text)

    page.on("console", on_console)
    yield page
    context.close()
    assert errors == []


def test_tempest_progress_moves_on_the_build_page_while_the_step_runs(
        node: Any, executor: Any, page: Page, base_url: str, tmp_path: Path,  # noqa: F811
        dash_sessions: sessionmaker[Session]) -> None:
    (node.lab_dir / "faults" / "tempest-slow").write_text("0.4\n", encoding="utf-8")
    job = make_job(node, include_regex=r"^tempest\.", concurrency=2)
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(
        run_step(job, executor, dash_sessions, tmp_path / "logs", progress_seconds=0.2)))
    worker.start()
    try:
        step = None
        while step is None and worker.is_alive():
            with dash_sessions() as s:
                step = s.scalars(select(BuildStep)).first()
            if step is None:
                threading.Event().wait(0.05)
        assert step is not None, "the tempest step never started"
        page.goto(f"{base_url}/builds/{step.build_id}")
        done = page.locator(f'p.progress[data-progress-for="{step.id}"] .progress-done')
        seen: list[str] = []
        while worker.is_alive():
            with dash_sessions() as s:
                running = s.get(BuildStep, step.id).state == StepState.RUNNING
            text = done.text_content(timeout=1000) if done.is_visible() else None
            if running and text is not None and (not seen or seen[-1] != text):
                seen.append(text)
            page.wait_for_timeout(50)
    finally:
        worker.join()
    (result, _log), = outcome
    counts = [int(v) for v in seen]
    # The page's count moved at least twice while the step was still running.
    assert len(counts) >= 3 and counts == sorted(counts), seen
    # The end: the page shows the streams' final counts once the step row has them.
    expect(done).to_have_text(str(len(result.tests)))
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "build-live-tempest.png"), full_page=True)


def test_status_build_and_error_pages_render_without_a_script_error(
        page: Page, base_url: str, world: Any) -> None:
    page.goto(base_url + "/")
    queued = page.locator(f'table.queued tr[data-build-id="{world.queued_id}"]')
    expect(queued.locator("td.position")).to_have_text("1")
    expect(queued.locator("td.waiting-for")).to_contain_text("waits for a free worker")
    created = queued.locator("time")
    expect(created).to_have_text("just now")
    expect(created).to_have_attribute("title", re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"))
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "status.png"), full_page=True)
    page.goto(f"{base_url}/builds/{world.finished_id}")
    failures = page.locator("section.failures-section pre.traceback")
    expect(failures.first).to_be_visible()  # open, not collapsed below the steps
    expect(failures.first).to_contain_text("实例 'vm-ü' <not> found")
    page.screenshot(path=str(ARTIFACTS / "build.png"), full_page=True)
    response = page.goto(base_url + MISSING)
    assert response is not None and response.status == 404
    expect(page.locator("h1")).to_have_text("404 · Not Found")
    page.locator("nav").get_by_role("link", name="Nodes").click()
    expect(page).to_have_url(base_url + "/nodes")
    favicon = page.request.get(base_url + "/favicon.ico")
    assert favicon.ok and favicon.headers["content-type"] == "image/vnd.microsoft.icon"
