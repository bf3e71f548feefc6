"""dashboard/chart_days.py: the charts keep the days that are over and read the rest,
so a build finishing (or waiting) today is in the next answer, and a held day
is not read again."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.models import Build, BuildState, BuildStep, StepState
from dashboard import chart_days, charts_view
from dashboard.chart_days import DayRows, final_until

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
TODAY = NOW.date()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[datetime]:
    """The charts' now, settable by the test."""
    now = [NOW]
    monkeypatch.setattr(charts_view, "utcnow", lambda: now[0])
    return now


def add_build(sessions: sessionmaker[Session], finished: datetime | None, *,
              state: BuildState = BuildState.SUCCEEDED, node: str = "hv-1") -> None:
    with sessions() as s, s.begin():
        ps = queue.upsert_patchset(s, queue.ChangeInfo(
            number=3001, project="openstack/compute-hyperv", branch="master", patchset=1,
            subject="s"))
        created = (finished or NOW) - timedelta(hours=1)
        build = Build(patchset_id=ps.id, job="hyperv-local", created_at=created,
                      state=state if finished else BuildState.QUEUED,
                      started_at=created + timedelta(minutes=10) if finished else None,
                      finished_at=finished)
        s.add(build)
        s.flush()
        if finished is not None:
            s.add(BuildStep(build_id=build.id, name="tempest", node=node,
                            state=StepState.SUCCEEDED, started_at=created,
                            finished_at=finished))


def charts(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/api/charts?days=7")
    assert response.status_code == 200
    data: dict[str, Any] = response.get_json()
    return data


def passed_on(data: dict[str, Any], day: date) -> int:
    return sum(p["passed"] for p in data["pass_rate"].get("hyperv-local", [])
               if p["day"] == day.isoformat())


def test_a_build_finishing_today_is_in_the_next_answer(
        client: FlaskClient, dash_sessions: sessionmaker[Session], clock: list[datetime]) -> None:
    add_build(dash_sessions, NOW - timedelta(days=2))
    first = charts(client)
    assert passed_on(first, TODAY - timedelta(days=2)) == 1
    assert passed_on(first, TODAY) == 0
    add_build(dash_sessions, NOW - timedelta(minutes=5), node="hv-2")
    add_build(dash_sessions, None)  # waiting now
    second = charts(client)
    assert passed_on(second, TODAY) == 1
    assert passed_on(second, TODAY - timedelta(days=2)) == 1  # the held day, unchanged
    assert {n["node"] for n in second["nodes"]} == {"hv-1", "hv-2"}
    assert second["queue"]["samples"][-1]["queued"] == 1


def test_held_days_are_not_read_again(
        client: FlaskClient, dash_sessions: sessionmaker[Session], clock: list[datetime]) -> None:
    add_build(dash_sessions, NOW - timedelta(days=3))
    charts(client)
    engine = dash_sessions.kw["bind"]
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        seen.append(str(parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        data = charts(client)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert passed_on(data, TODAY - timedelta(days=3)) == 1
    # Each of the three statements starts at the first day that may still change.
    since, start = str(TODAY - timedelta(days=6)), str(final_until(NOW).date())
    selects = [p for p in seen if start in p]
    assert len(selects) == 3
    assert not any(since in p for p in seen)


def test_a_day_is_held_only_an_hour_after_it_ends(
        client: FlaskClient, dash_sessions: sessionmaker[Session], clock: list[datetime]) -> None:
    midnight = datetime.combine(TODAY, datetime.min.time(), tzinfo=UTC)
    clock[0] = midnight + timedelta(minutes=30)
    charts(client)  # yesterday is not final yet
    # A finish stamped just before midnight, committed after that first answer.
    add_build(dash_sessions, midnight - timedelta(seconds=1))
    clock[0] = midnight + timedelta(minutes=40)
    assert passed_on(charts(client), TODAY - timedelta(days=1)) == 1


def test_a_queue_day_with_a_waiting_build_is_read_again() -> None:
    store: DayRows[tuple[datetime, datetime | None]] = DayRows()
    day = NOW - timedelta(days=2)
    since = datetime.combine(day.date(), datetime.min.time(), tzinfo=UTC)
    rows: list[tuple[datetime, datetime | None]] = [(day, None)]
    reads: list[Any] = []

    def query(covered: Any) -> list[tuple[datetime, datetime | None]]:
        reads.append(list(covered))
        return [r for r in rows if not any(a <= r[0] < b for a, b in covered)]

    def final(spans: Any) -> bool:
        return all(left is not None for _, left in spans)

    assert store.rows(since, NOW, query, lambda r: r[0].date(), final) == [(day, None)]
    rows[0] = (day, day + timedelta(hours=1))  # it started
    assert store.rows(since, NOW, query, lambda r: r[0].date(), final) == rows
    assert not any(a <= day < b for a, b in reads[1])  # its day was not held: read again
    assert store.rows(since, NOW, query, lambda r: r[0].date(), final) == rows
    assert any(a <= day < b for a, b in reads[2])  # now it is


def test_a_window_not_starting_at_midnight_holds_no_part_of_a_day() -> None:
    store: DayRows[date] = DayRows()
    since = NOW - timedelta(days=3)  # noon
    store.rows(since, NOW, lambda covered: [], lambda d: d)
    assert since.date() not in store.days
    assert chart_days.MAX_DAYS > charts_view.MAX_DAYS
