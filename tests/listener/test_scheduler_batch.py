"""listener.scheduler's groups on SQLite and PostgreSQL: a group's uploads and rechecks
are queued together (ci.queue_batch), in the order the events came."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from ci.config import Config
from listener.scheduler import Scheduler
from tests.listener.test_scheduler import (
    HYPERV_FILES,
    FakeGerrit,
    builds,
    change,
    commented,
    outcomes,
    store,
    uploaded,
)
from tests.sql_statements import sent_statements

JOB = "hyperv-tempest"


@pytest.fixture
def gerrit() -> FakeGerrit:
    return FakeGerrit()


@pytest.fixture
def scheduler(config: Config, sessions: sessionmaker[Session], gerrit: FakeGerrit) -> Scheduler:
    return Scheduler(config, sessions, gerrit)


def made_up(number: int, ps: int = 1, path: str = "nova/virt/hyperv/vmops.py") -> dict[str, Any]:
    """A catch-up's upload: it carries its files, so no lookup is needed."""
    event = uploaded(number, ps) | {"source": "catch-up"}
    event["patchSet"]["files"] = [{"file": "/COMMIT_MSG"}, {"file": path}]
    return event


def statements_of(sessions: sessionmaker[Session], scheduler: Scheduler) -> tuple[int, int]:
    """(events handled, SQL statements sent) for one `run_once`."""
    with sent_statements(sessions.kw["bind"]) as sent:
        done = scheduler.run_once()
    return done, len(sent)


def test_a_catch_up_costs_the_same_statements_for_4_or_40_uploads(
        scheduler: Scheduler, sessions: sessionmaker[Session], gerrit: FakeGerrit) -> None:
    store(sessions, *(made_up(100 + i) for i in range(4)))
    few = statements_of(sessions, scheduler)
    store(sessions, *(made_up(200 + i) for i in range(40)))
    many = statements_of(sessions, scheduler)
    assert (few[0], many[0]) == (4, 40)
    assert many[1] == few[1]
    assert len(builds(sessions)) == 44 and gerrit.calls == []


def test_events_of_a_change_act_in_order_within_a_group(
        scheduler: Scheduler, sessions: sessionmaker[Session], gerrit: FakeGerrit) -> None:
    gerrit.files[(63, 1)] = HYPERV_FILES
    store(sessions, made_up(60), made_up(61), {"type": "change-abandoned", **change(60, 1)},
          made_up(62), made_up(61, 2), commented(63, 1, "recheck"), made_up(60, 2),
          {"type": "change-restored", **change(60, 1)}, commented(62, 1, "recheck"))
    assert scheduler.run_once() == 9
    assert builds(sessions) == [
        (60, 1, JOB, "aborted", "catch-up"),  # the abandon came after its upload
        (61, 1, JOB, "superseded", "catch-up"),
        (62, 1, JOB, "queued", "catch-up"),
        (61, 2, JOB, "queued", "catch-up"),
        (63, 1, JOB, "queued", "recheck"),
        (60, 2, JOB, "queued", "catch-up"),
    ]
    assert outcomes(sessions) == [
        f"queued {JOB} for 60,1 (catch-up)", f"queued {JOB} for 61,1 (catch-up)",
        "change abandoned: aborted 1 build(s)", f"queued {JOB} for 62,1 (catch-up)",
        f"queued {JOB} for 61,2 (catch-up)", f"queued {JOB} for 63,1 (recheck)",
        f"queued {JOB} for 60,2 (catch-up)", "change restored",
        f"already queued or outdated: {JOB}"]


def test_an_upload_off_the_watched_files_in_a_group_aborts_the_older_run(
        scheduler: Scheduler, sessions: sessionmaker[Session]) -> None:
    store(sessions, made_up(70), made_up(71), made_up(70, 2, path="nova/compute/api.py"))
    assert scheduler.run_once() == 3
    assert builds(sessions) == [(70, 1, JOB, "aborted", "catch-up"),
                                (71, 1, JOB, "queued", "catch-up")]
    assert outcomes(sessions)[2] == (
        "no job matches the changed files; stopped 1 build(s) of older patchsets")
