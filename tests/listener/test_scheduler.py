"""listener.scheduler on SQLite and PostgreSQL: stored events become builds."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci.config import Config
from ci.db import transaction
from ci.gerrit_errors import GerritError
from ci.models import Build, BuildState, Change, Event, Patchset
from listener.scheduler import Scheduler

SUBJECT = "Hyper-V: 修复 unicode 实例名 — café"
OWNER = "Zoë Ñúñez 李"


class FakeGerrit:
    """The lookup seam: answers from a dict, or fails like a dropped connection."""

    def __init__(self) -> None:
        self.files: dict[tuple[int, int], list[str]] = {}
        self.rows: dict[int, dict[str, Any]] = {}
        self.fail = False
        self.down_for: set[int] = set()  # changes whose lookups fail like a dropped link
        self.calls: list[tuple[str, Any]] = []

    def changed_files(self, change: int, patchset: int) -> list[str]:
        self.calls.append(("files", (change, patchset)))
        if self.fail or change in self.down_for:
            raise ConnectionResetError("gerrit went away")
        if (change, patchset) not in self.files:
            # What ci.gerrit.GerritClient.changed_files says when Gerrit does not know it.
            raise GerritError(f"change {change} has no patch set {patchset}", transient=False)
        return self.files[(change, patchset)]

    def files_of(self, patchsets: Any) -> dict[tuple[int, int], list[str]]:
        pairs = sorted(patchsets)
        self.calls.append(("batch", pairs))
        if self.fail or any(change in self.down_for for change, _ in pairs):
            raise ConnectionResetError("gerrit went away")
        return {pair: self.files[pair] for pair in pairs if pair in self.files}

    def query(self, q: str, *, current_patch_set: bool = False,
              files: bool = False) -> list[dict[str, Any]]:
        self.calls.append(("query", q))
        if self.fail:
            raise ConnectionResetError("gerrit went away")
        number = int(q.removeprefix("change:"))
        return [self.rows[number]] if number in self.rows else []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def change(number: int, ps: int, project: str = "openstack/nova",
           branch: str = "master") -> dict[str, Any]:
    return {
        "change": {"project": project, "branch": branch, "id": "I" + "a" * 40,
                   "number": number, "subject": SUBJECT,
                   "owner": {"name": OWNER, "email": "zoe@example.org", "username": "zoe"},
                   "url": f"https://review.example.org/c/{project}/+/{number}",
                   "status": "NEW"},
        "patchSet": {"number": ps, "revision": f"{ps:040x}",
                     "ref": f"refs/changes/{number % 100:02d}/{number}/{ps}",
                     "uploader": {"name": OWNER, "username": "zoe"}},
        "project": project, "refName": f"refs/heads/{branch}",
    }


def uploaded(number: int, ps: int, **kw: Any) -> dict[str, Any]:
    return {"type": "patchset-created", **change(number, ps, **kw),
            "uploader": {"name": OWNER, "username": "zoe"}, "eventCreatedOn": 1700000000 + ps}


def commented(number: int, ps: int, text: str, author: str = "reviewer") -> dict[str, Any]:
    return {"type": "comment-added", **change(number, ps), "author": {"username": author},
            "comment": f"Patch Set {ps}:\n\n{text}", "approvals": [],
            "eventCreatedOn": 1700000100}


def store(sessions: sessionmaker[Session], *events: dict[str, Any]) -> list[int]:
    with transaction(sessions) as session:
        rows = [Event(type=e["type"], raw=orjson.dumps(e).decode()) for e in events]
        session.add_all(rows)
        session.flush()
        return [r.id for r in rows]


def builds(sessions: sessionmaker[Session]) -> list[tuple[int, int, str, str, str]]:
    with transaction(sessions) as session:
        rows = session.execute(
            select(Change.number, Patchset.number, Build.job, Build.state, Build.reason)
            .join(Patchset, Build.patchset_id == Patchset.id).join(Change).order_by(Build.id))
        return [tuple(r) for r in rows]  # type: ignore[misc]


def outcomes(sessions: sessionmaker[Session]) -> list[str | None]:
    with transaction(sessions) as session:
        return list(session.scalars(select(Event.outcome).order_by(Event.id)))


@pytest.fixture
def gerrit() -> FakeGerrit:
    return FakeGerrit()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def scheduler(config: Config, sessions: sessionmaker[Session], gerrit: FakeGerrit,
              clock: Clock) -> Scheduler:
    return Scheduler(config, sessions, gerrit, clock=clock)


HYPERV_FILES = ["/COMMIT_MSG", "nova/virt/hyperv/vmops.py"]


def test_patchset_created_queues_a_build(scheduler: Scheduler, sessions: sessionmaker[Session],
                                         gerrit: FakeGerrit) -> None:
    gerrit.files[(4321, 1)] = HYPERV_FILES
    store(sessions, uploaded(4321, 1))
    assert scheduler.run_once() == 1
    assert builds(sessions) == [(4321, 1, "hyperv-tempest", "queued", "patchset-created")]
    with transaction(sessions) as session:
        event = session.scalars(select(Event)).one()
        assert event.processed_at is not None
        assert event.outcome == "queued hyperv-tempest for 4321,1 (patchset-created)"
        ps = session.scalars(select(Patchset)).one()
        assert ps.files == HYPERV_FILES  # cached for rechecks
    assert scheduler.run_once() == 0


def test_non_matching_events_are_processed_without_builds(
        scheduler: Scheduler, sessions: sessionmaker[Session], gerrit: FakeGerrit) -> None:
    gerrit.files[(10, 1)] = ["/COMMIT_MSG", "nova/compute/manager.py"]
    store(sessions,
          uploaded(10, 1),
          uploaded(11, 1, project="openstack/neutron"),
          uploaded(12, 1, branch="feature/x"),
          commented(10, 1, "please recheck"),
          {"type": "ref-updated", "refUpdate": {"refName": "refs/heads/master"}},
          {"type": "dropped-output"})
    with transaction(sessions) as session:
        session.add(Event(type="invalid", raw="{not json"))
    assert scheduler.run_once() == 7
    assert builds(sessions) == []
    found = outcomes(sessions)
    assert found[-1] is not None and found[-1].startswith("ignored: not a JSON object (")
    assert found[:-1] == [
        "no job matches the changed files",
        "ignored: openstack/neutron master is not watched",
        "ignored: openstack/nova feature/x is not watched",
        "ignored: not a recheck",
        "ignored: ref-updated",
        "events were dropped by Gerrit; the listener catches up by query",
    ]
    # Only the watched nova change needed its files.
    assert gerrit.calls == [("files", (10, 1))]


def test_whole_repo_project_needs_no_file_lookup(
        scheduler: Scheduler, sessions: sessionmaker[Session], gerrit: FakeGerrit) -> None:
    store(sessions, uploaded(7, 1, project="openstack/compute-hyperv"))
    scheduler.run_once()
    assert [b[2] for b in builds(sessions)] == ["hyperv-tempest", "hyperv-unit"]
    assert gerrit.calls == []


def test_new_patchset_supersedes(scheduler: Scheduler, sessions: sessionmaker[Session],
                                 gerrit: FakeGerrit) -> None:
    gerrit.files[(5, 1)] = HYPERV_FILES
    gerrit.files[(5, 2)] = HYPERV_FILES
    gerrit.files[(5, 3)] = ["nova/compute/manager.py"]
    store(sessions, uploaded(5, 1), uploaded(5, 2))
    scheduler.run_once()
    assert builds(sessions) == [
        (5, 1, "hyperv-tempest", "superseded", "patchset-created"),
        (5, 2, "hyperv-tempest", "queued", "patchset-created"),
    ]
    # A later patchset that no longer touches Hyper-V still ends the old run.
    store(sessions, uploaded(5, 3))
    scheduler.run_once()
    assert builds(sessions)[1][3] == "aborted"
    assert outcomes(sessions)[-1] == ("no job matches the changed files; "
                                      "stopped 1 build(s) of older patchsets")


def test_duplicate_upload_is_built_once(scheduler: Scheduler, sessions: sessionmaker[Session],
                                        gerrit: FakeGerrit) -> None:
    gerrit.files[(6, 1)] = HYPERV_FILES
    store(sessions, uploaded(6, 1))
    scheduler.run_once()
    with transaction(sessions) as session:
        build = session.scalars(select(Build)).one()
        build.state = BuildState.SUCCEEDED
    store(sessions, uploaded(6, 1) | {"source": "catch-up"})
    scheduler.run_once()
    assert len(builds(sessions)) == 1
    assert outcomes(sessions)[-1] == "already built: hyperv-tempest"


def test_recheck_re_enqueues(scheduler: Scheduler, sessions: sessionmaker[Session],
                             gerrit: FakeGerrit) -> None:
    gerrit.files[(8, 1)] = HYPERV_FILES
    store(sessions, uploaded(8, 1))
    scheduler.run_once()
    with transaction(sessions) as session:
        session.scalars(select(Build)).one().state = BuildState.FAILED
    store(sessions, commented(8, 1, "recheck hyperv"), commented(8, 1, "recheck"),
          commented(8, 1, "recheck", author="hyperv-ci"))
    assert scheduler.run_once() == 3
    assert builds(sessions) == [(8, 1, "hyperv-tempest", "failed", "patchset-created"),
                                (8, 1, "hyperv-tempest", "queued", "recheck")]
    assert outcomes(sessions)[1:] == [
        "queued hyperv-tempest for 8,1 (recheck)",
        "already queued or outdated: hyperv-tempest",  # a burst of rechecks: one build
        "ignored: comment by our own or an ignored account",
    ]
    assert gerrit.calls == [("files", (8, 1))]  # the recheck used the cached files


def test_recheck_of_unknown_patchset_queries_gerrit(
        scheduler: Scheduler, sessions: sessionmaker[Session], gerrit: FakeGerrit) -> None:
    row = change(9, 2)["change"] | {"currentPatchSet": change(9, 2)["patchSet"] | {
        "files": [{"file": "/COMMIT_MSG"}, {"file": "nova/virt/hyperv/volumeops.py"}]}}
    gerrit.rows[9] = row
    store(sessions, commented(9, 2, "recheck"), commented(9, 1, "recheck"))
    scheduler.run_once()
    assert builds(sessions) == [(9, 2, "hyperv-tempest", "queued", "recheck")]
    assert outcomes(sessions)[1] == "ignored: recheck of patchset 1, current is 2"
    assert ("files", (9, 2)) not in gerrit.calls  # the query brought the files


@pytest.mark.parametrize(("kind", "status"), [("change-abandoned", "ABANDONED"),
                                              ("change-merged", "MERGED")])
def test_abandon_and_merge_abort(scheduler: Scheduler, sessions: sessionmaker[Session],
                                 gerrit: FakeGerrit, kind: str, status: str) -> None:
    gerrit.files[(3, 1)] = HYPERV_FILES
    store(sessions, uploaded(3, 1), {"type": kind, **change(3, 1)})
    scheduler.run_once()
    assert [b[3] for b in builds(sessions)] == ["aborted"]
    with transaction(sessions) as session:
        assert session.scalars(select(Change.status)).one() == status
        assert session.scalars(select(Build.summary)).one() == kind.replace("-", " ")
    store(sessions, {"type": "change-restored", **change(3, 1)})
    scheduler.run_once()
    with transaction(sessions) as session:
        assert session.scalars(select(Change.status)).one() == "NEW"


@pytest.mark.parametrize("status", ["ABANDONED", "MERGED"])
def test_a_recheck_on_a_closed_change_builds_nothing(
        scheduler: Scheduler, sessions: sessionmaker[Session], gerrit: FakeGerrit,
        status: str) -> None:
    gerrit.files[(5, 1)] = HYPERV_FILES
    store(sessions, uploaded(5, 1), {"type": f"change-{status.lower()}", **change(5, 1)})
    scheduler.run_once()
    # Gerrit takes comments on closed changes; its events carry the change's status.
    closed = commented(5, 1, "recheck")
    closed["change"]["status"] = status
    store(sessions, closed)
    assert scheduler.run_once() == 1
    assert [b[3] for b in builds(sessions)] == ["aborted"]
    assert outcomes(sessions)[-1] == f"ignored: change 5 is closed ({status})"


def test_lookup_failure_leaves_the_event_for_retry(
        scheduler: Scheduler, sessions: sessionmaker[Session], gerrit: FakeGerrit,
        clock: Clock) -> None:
    gerrit.files[(4, 1)] = HYPERV_FILES
    gerrit.files[(20, 1)] = HYPERV_FILES
    gerrit.fail = True
    store(sessions, uploaded(4, 1), {"type": "change-abandoned", **change(4, 1)})
    assert scheduler.run_once() == 0
    assert outcomes(sessions) == [None, None]  # the abandon waits behind the upload
    gerrit.fail = False
    store(sessions, uploaded(20, 1))  # other changes go on meanwhile
    assert scheduler.run_once() == 1
    assert builds(sessions) == [(20, 1, "hyperv-tempest", "queued", "patchset-created")]
    assert outcomes(sessions)[:2] == [None, None]  # still backing off
    clock.now += 2.0
    assert scheduler.run_once() == 2
    assert [b[3] for b in builds(sessions)] == ["queued", "aborted"]
    assert outcomes(sessions)[1] == "change abandoned: aborted 1 build(s)"


def test_backoff_grows(scheduler: Scheduler, sessions: sessionmaker[Session],
                       gerrit: FakeGerrit, clock: Clock) -> None:
    gerrit.fail = True
    store(sessions, uploaded(4, 1))
    tries = []
    for _ in range(12):
        scheduler.run_once()
        tries.append(len(gerrit.calls))
        clock.now += 3.0
    # Waits of 2, 4, 8, 16 s: attempts at t=0, 3, 9, 18 (the next is due at 34),
    # four in 33 s where a fixed 3 s retry would make twelve.
    assert tries == [1, 2, 2, 3, 3, 3, 4, 4, 4, 4, 4, 4]
    assert outcomes(sessions) == [None]


def test_non_ascii_stored_intact(scheduler: Scheduler, sessions: sessionmaker[Session],
                                 gerrit: FakeGerrit) -> None:
    gerrit.files[(4322, 1)] = ["/COMMIT_MSG", "nova/virt/hyperv/données_测试.py"]
    store(sessions, uploaded(4322, 1))
    scheduler.run_once()
    with transaction(sessions) as session:
        stored = session.scalars(select(Change)).one()
        assert (stored.subject, stored.owner_name) == (SUBJECT, OWNER)
        assert session.scalars(select(Patchset.uploader_name)).one() == OWNER
        files = session.scalars(select(Patchset.files)).one()
        assert files[1] == "nova/virt/hyperv/données_测试.py"
        raw = session.scalars(select(Event.raw)).one()
        assert orjson.loads(raw)["change"]["subject"] == SUBJECT


def test_run_stops_and_wakes(scheduler: Scheduler, sessions: sessionmaker[Session],
                             gerrit: FakeGerrit) -> None:
    gerrit.files[(1, 1)] = HYPERV_FILES
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop, 60.0))
    thread.start()
    store(sessions, uploaded(1, 1))
    scheduler.wake()
    for _ in range(200):
        if builds(sessions):
            break
        threading.Event().wait(0.05)
    stop.set()
    scheduler.wake()
    thread.join(10)
    assert not thread.is_alive()
    assert len(builds(sessions)) == 1


def failed_events(sessions: sessionmaker[Session]) -> list[tuple[int, str]]:
    with transaction(sessions) as session:
        rows = session.execute(select(Event.id, Event.outcome)
                               .where(Event.failed_at.is_not(None)).order_by(Event.id))
        return [(i, o or "") for i, o in rows]


def test_events_waiting_behind_a_failing_change_never_hide_newer_ones(
        scheduler: Scheduler, sessions: sessionmaker[Session], gerrit: FakeGerrit) -> None:
    # One change whose lookup keeps failing (transiently), 210 comments on it
    # behind it: more than the read window. Another change's push must still build.
    gerrit.down_for.add(7)
    store(sessions, uploaded(7, 1))
    store(sessions, *(commented(7, 1, f"looks good {i}") for i in range(210)))
    gerrit.files[(8, 1)] = HYPERV_FILES
    store(sessions, uploaded(8, 1))
    assert scheduler.run_once() == 1
    assert builds(sessions) == [(8, 1, "hyperv-tempest", "queued", "patchset-created")]
    assert outcomes(sessions)[:211] == [None] * 211  # change 7 still in order, waiting


def test_a_permanent_lookup_error_fails_the_event_and_holds_back_nothing(
        scheduler: Scheduler, sessions: sessionmaker[Session], gerrit: FakeGerrit) -> None:
    # Gerrit does not know 9,1: asking again cannot help.
    (first,) = store(sessions, uploaded(9, 1))
    store(sessions, *(commented(9, 1, f"comment {i}") for i in range(210)))
    gerrit.files[(9, 2)] = HYPERV_FILES
    store(sessions, uploaded(9, 2))
    scheduler.run_once()
    scheduler.run_once()
    assert builds(sessions) == [(9, 2, "hyperv-tempest", "queued", "patchset-created")]
    ((event_id, outcome),) = failed_events(sessions)
    assert event_id == first
    assert outcome.startswith("failed: Gerrit lookup failed: GerritRejected: change 9 has no "
                              "patch set 1")
    assert gerrit.calls.count(("files", (9, 1))) == 1  # never retried
    assert None not in outcomes(sessions)


def test_an_unusable_gerrit_answer_is_permanent_not_a_gerrit_outage(
        scheduler: Scheduler, sessions: sessionmaker[Session], gerrit: FakeGerrit) -> None:
    # A recheck of a patchset we never saw: Gerrit answers with no patch sets.
    gerrit.rows[10] = {"number": 10, "project": "openstack/nova", "branch": "master"}
    store(sessions, commented(10, 1, "recheck"))
    gerrit.files[(10, 2)] = HYPERV_FILES
    store(sessions, uploaded(10, 2))
    assert scheduler.run_once() == 2
    (failed,) = failed_events(sessions)
    assert "NoSuchPatchset: change 10 has no patch sets in the query answer" in failed[1]
    assert builds(sessions) == [(10, 2, "hyperv-tempest", "queued", "patchset-created")]


def test_transient_failures_give_up_after_the_retry_budget(
        config: Config, sessions: sessionmaker[Session], gerrit: FakeGerrit,
        clock: Clock) -> None:
    scheduler = Scheduler(config, sessions, gerrit, clock=clock, retry_budget=60,
                          max_backoff=10)
    gerrit.fail = True
    store(sessions, uploaded(11, 1))
    for _ in range(20):
        scheduler.run_once()
        clock.now += 10
        if failed_events(sessions):
            break
    (failed,) = failed_events(sessions)
    assert "ConnectionResetError: gerrit went away" in failed[1]
    assert 60 <= clock.now - 1000.0 <= 80  # after the budget, not before
    assert scheduler.failed == 1


def test_a_nul_in_gerrit_text_is_dropped_and_the_change_built(
        scheduler: Scheduler, sessions: sessionmaker[Session], gerrit: FakeGerrit) -> None:
    # PostgreSQL refuses NUL in text: an escaped \u0000 in a subject must not
    # leave the event pending forever (db_url runs this on both engines).
    event = uploaded(12, 1)
    event["change"]["subject"] = "Hyper-V\x00 fix 修复"
    gerrit.files[(12, 1)] = [*HYPERV_FILES, "nova/virt/hyperv/\x00odd.py"]
    store(sessions, event)
    assert scheduler.run_once() == 1
    assert builds(sessions) == [(12, 1, "hyperv-tempest", "queued", "patchset-created")]
    with transaction(sessions) as session:
        assert session.scalars(select(Change.subject)).one() == "Hyper-V fix 修复"


def test_a_page_of_uploads_asks_gerrit_for_their_files_once(
        scheduler: Scheduler, sessions: sessionmaker[Session], gerrit: FakeGerrit) -> None:
    for number in range(30, 36):
        gerrit.files[(number, 1)] = HYPERV_FILES
    gerrit.files[(33, 1)] = ["nova/compute/manager.py"]
    store(sessions, *(uploaded(number, 1) for number in range(30, 36)))
    assert scheduler.run_once() == 6
    assert gerrit.calls == [("batch", [(n, 1) for n in range(30, 36)])]
    assert [b[0] for b in builds(sessions)] == [30, 31, 32, 34, 35]


def test_a_made_up_upload_with_its_files_needs_no_lookup(
        scheduler: Scheduler, sessions: sessionmaker[Session], gerrit: FakeGerrit) -> None:
    events = []
    for number, path in ((40, "nova/virt/hyperv/vmops.py"), (41, "nova/compute/api.py")):
        event = uploaded(number, 1) | {"source": "catch-up"}
        event["patchSet"]["files"] = [
            {"file": "/COMMIT_MSG", "type": "ADDED", "insertions": 9, "deletions": 0},
            {"file": path, "type": "MODIFIED", "insertions": 2, "deletions": -1}]
        events.append(event)
    store(sessions, *events)
    assert scheduler.run_once() == 2
    assert gerrit.calls == []
    assert builds(sessions) == [(40, 1, "hyperv-tempest", "queued", "catch-up")]


class _RestoreBreaks(Scheduler):
    def on_change_restored(self, session: Session, event: Any, target: Any) -> str:
        raise RuntimeError("a bug in one handler")


def test_one_failing_event_of_a_group_fails_alone(
        config: Config, sessions: sessionmaker[Session], gerrit: FakeGerrit) -> None:
    scheduler = _RestoreBreaks(config, sessions, gerrit)
    events = []
    for number in (50, 51, 52):
        event = uploaded(number, 1) | {"source": "catch-up"}
        event["patchSet"]["files"] = [{"file": "nova/virt/hyperv/vmops.py"}]
        events.append(event)
    events.insert(1, {"type": "change-restored", **change(50, 1)})
    restore_id = store(sessions, *events)[1]
    assert scheduler.run_once() == 4
    assert [b[0] for b in builds(sessions)] == [50, 51, 52]
    ((event_id, outcome),) = failed_events(sessions)
    assert event_id == restore_id and "RuntimeError: a bug in one handler" in outcome
