"""dashboard/metrics_builds.py: the groups of builds that finished over an hour ago are
summed once and kept; every scrape still counts what finished or was queued since,
on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import event, update
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.models import Build, BuildState, utcnow
from dashboard.metrics_builds import SETTLE, FinishedBuilds, read_builds
from tests.dashboard.test_metrics import scrape, value


@pytest.fixture
def dash_sessions(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """Overrides the conftest's SQLite-only database: these run on both engines."""
    return sessions


def add(sessions: sessionmaker[Session], state: BuildState, finished: datetime | None,
        seconds: float = 60.0) -> int:
    with sessions() as s, s.begin():
        ps = queue.upsert_patchset(s, queue.ChangeInfo(
            number=4001, project="openstack/compute-hyperv", branch="master", patchset=1,
            subject="s"))
        started = None if finished is None else finished - timedelta(seconds=seconds)
        if state == BuildState.RUNNING:
            started = utcnow()
        row = Build(patchset_id=ps.id, job="hyperv-local", state=state, started_at=started,
                    finished_at=finished)
        s.add(row)
        s.flush()
        return row.id


def counts(sessions: sessionmaker[Session], now: datetime,
           held: FinishedBuilds) -> dict[str, tuple[int, int, float]]:
    with sessions() as s, s.begin():
        return {g.state: (g.count, g.timed, round(g.seconds, 3))
                for g in read_builds(s, now, held) if g.job == "hyperv-local"}


def test_what_finishes_after_a_scrape_is_in_the_next(
        dash_sessions: sessionmaker[Session]) -> None:
    now = utcnow()
    add(dash_sessions, BuildState.SUCCEEDED, now - timedelta(hours=3), 100)
    running = add(dash_sessions, BuildState.RUNNING, None)
    held = FinishedBuilds()
    assert counts(dash_sessions, now, held) == {
        "succeeded": (1, 1, 100.0), "running": (1, 0, 0.0)}
    assert held.until == now - SETTLE
    with dash_sessions() as s, s.begin():
        s.execute(update(Build).where(Build.id == running).values(
            state=BuildState.SUCCEEDED, finished_at=now + timedelta(seconds=30)))
    add(dash_sessions, BuildState.QUEUED, None)
    later = now + timedelta(hours=2)  # the finish just made is held from here on
    assert counts(dash_sessions, later, held) == {
        "succeeded": (2, 2, pytest.approx(130.0, abs=1)), "queued": (1, 0, 0.0)}
    assert counts(dash_sessions, later + timedelta(minutes=1), held)["succeeded"][0] == 2


def test_held_builds_are_not_read_again(dash_sessions: sessionmaker[Session]) -> None:
    now = utcnow()
    add(dash_sessions, BuildState.FAILED, now - timedelta(days=2))
    held = FinishedBuilds()
    counts(dash_sessions, now, held)
    engine = dash_sessions.kw["bind"]
    seen: list[str] = []

    def record(conn: object, cursor: object, statement: str, parameters: object,
               *args: object) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        assert counts(dash_sessions, now, held)["failed"][0] == 1
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert any("finished_at >=" in s and "IS NULL" in s for s in seen)


def test_the_endpoint_counts_a_build_queued_between_scrapes(
        client: FlaskClient, dash_sessions: sessionmaker[Session]) -> None:
    labels = {"job": "hyperv-local", "state": "queued", "result": ""}
    before = value(scrape(client), "hypervci_builds", **labels)
    add(dash_sessions, BuildState.QUEUED, None)
    assert value(scrape(client), "hypervci_builds", **labels) == before + 1
