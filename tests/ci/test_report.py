"""Report formatting (pure) and the outbox: once per build, retried, never twice."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.config import Config, parse_config
from ci.gerrit import GerritClient, GerritError, LabelRefused
from ci.models import Build, BuildState, Report, ReportState, utcnow
from ci.report import (
    CLAIM_SECONDS,
    format_duration,
    format_job_line,
    format_message,
    queue_report,
    requeue_failed,
    send_pending,
    vote_for,
)
from sim.gerrit import SimGerrit, make_client_identity


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "0s"), (0, "0s"), (12.4, "12s"), (245, "4m 05s"), (3723, "1h 02m 03s"),
     (36000, "10h 00m 00s")],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_job_line_is_the_third_party_format() -> None:
    line = format_job_line("hyperv-tempest", "http://logs.example.org/10001/1/hyperv-tempest-7/",
                           BuildState.SUCCEEDED, 3723)
    assert line == ("* hyperv-tempest http://logs.example.org/10001/1/hyperv-tempest-7/ : "
                    "SUCCESS in 1h 02m 03s")


def test_votes_never_punish_the_change_for_the_ci() -> None:
    assert vote_for(BuildState.SUCCEEDED, True) == 1
    assert vote_for(BuildState.FAILED, True) == -1
    assert vote_for(BuildState.ERROR, True) is None
    assert vote_for(BuildState.MERGE_CONFLICT, True) is None
    assert vote_for(BuildState.FAILED, False) is None


def test_message_mentions_recheck_and_summary() -> None:
    message = format_message("hyperv-ci", BuildState.FAILED, "* j u : FAILURE in 1s",
                             "3 tests failed")
    assert message.startswith("Build failed.")
    assert "3 tests failed" in message and "recheck" in message


def make_config() -> Config:
    return parse_config({
        "gerrit": {"host": "h", "username": "hyperv-ci", "key_file": "k", "known_hosts": "kh"},
        "projects": [{"name": "openstack/nova", "jobs": ["hyperv-tempest"]}],
        "jobs": {"hyperv-tempest": {"type": "local", "command": ["true"]}},
        "reporter": {"retry_seconds": 3600 * 6, "max_backoff_seconds": 600},
    })


def finished_build(sessions: sessionmaker[Session], state: BuildState,
                   number: int = 10001, config: Config | None = None) -> int:
    with sessions() as session, session.begin():
        ps = queue.upsert_patchset(session, queue.ChangeInfo(
            number=number, project="openstack/nova", branch="master", patchset=2,
            subject="Ünïcode 中文"))
        build = queue.enqueue(session, ps, "hyperv-tempest", "patchset-created")
        assert build is not None
        queue.claim_next(session, "w", 60)
        done = queue.finish(session, build.id, "w", state, "summary",
                            log_url=f"http://logs/{build.id}/")
        assert done is not None
        queue_report(session, done, config or make_config())
        return build.id


class RecordingGerrit:
    """A fake at the I/O seam: records reviews, optionally failing first."""

    def __init__(self, fail_times: int = 0, posted: list[dict[str, Any]] | None = None) -> None:
        self.fail_times = fail_times
        self.reviews: list[dict[str, Any]] = []
        self.posted = posted or []
        self.status: dict[int, str] = {}  # a change not named here is open (NEW)
        self.queries: list[str] = []

    def review(self, project: str, change: int, patchset: int, *, message: str,
               labels: dict[str, int], tag: str | None = None) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("gerrit unreachable")
        self.reviews.append({"change": change, "patchset": patchset, "labels": labels,
                             "message": message, "tag": tag})

    def query(self, query: str, **flags: bool) -> list[dict[str, Any]]:
        # `change:1 OR change:2`, as Gerrit answers it: one row per change it has.
        self.queries.append(query)
        numbers = [int(term.removeprefix("change:")) for term in query.split(" OR ")]
        return [{"number": n, "status": self.status.get(n, "NEW"), "comments": self.posted}
                for n in numbers if self.status.get(n) != "DELETED"]


def test_report_sent_once(sessions: sessionmaker[Session]) -> None:
    finished_build(sessions, BuildState.SUCCEEDED)
    gerrit = RecordingGerrit()
    assert send_pending(sessions, lambda: gerrit, make_config()) == 1
    assert send_pending(sessions, lambda: gerrit, make_config()) == 0
    assert len(gerrit.reviews) == 1
    review = gerrit.reviews[0]
    assert review["labels"] == {"Verified": 1}
    assert (review["change"], review["patchset"]) == (10001, 2)
    assert "* hyperv-tempest http://logs/1/ : SUCCESS in" in review["message"]
    assert review["tag"] == "autogenerated:hyperv-ci"


def test_error_is_a_comment_without_a_vote(sessions: sessionmaker[Session]) -> None:
    finished_build(sessions, BuildState.ERROR)
    gerrit = RecordingGerrit()
    send_pending(sessions, lambda: gerrit, make_config())
    assert gerrit.reviews[0]["labels"] == {}
    assert "not a verdict on the change" in gerrit.reviews[0]["message"]


def test_a_second_report_for_one_build_is_refused(sessions: sessionmaker[Session]) -> None:
    build_id = finished_build(sessions, BuildState.FAILED)
    with sessions() as session:
        build = session.get(Build, build_id)
        assert build is not None
        with pytest.raises(IntegrityError):
            queue_report(session, build, make_config())


def make_due(sessions: sessionmaker[Session], report_id: int, *,
             age: timedelta | None = None) -> None:
    """Let time pass: the report is due now (and was queued `age` ago)."""
    with sessions() as session, session.begin():
        row = session.get(Report, report_id)
        assert row is not None
        if age is not None:
            row.created_at = utcnow() - age
        row.next_attempt_at = utcnow() - timedelta(seconds=1)


def only_report(sessions: sessionmaker[Session]) -> Report:
    with sessions() as session:
        report = session.scalar(select(Report))
        assert report is not None
        return report


def test_a_long_gerrit_outage_does_not_lose_the_vote(sessions: sessionmaker[Session]) -> None:
    finished_build(sessions, BuildState.FAILED)
    report_id = only_report(sessions).id
    # Gerrit is down for about an hour: 20 attempts, the last one 60 minutes in.
    gerrit = RecordingGerrit(fail_times=20)
    for minutes in range(20):
        make_due(sessions, report_id, age=timedelta(minutes=3 * (minutes + 1)))
        before = utcnow()
        assert send_pending(sessions, lambda: gerrit, make_config()) == 0
        after = utcnow()
        report = only_report(sessions)
        assert report.state == ReportState.PENDING
        assert "gerrit unreachable" in report.last_error
        # The backoff doubles, then stays at the cap.
        delay = min(600, 2 ** report.attempts)
        assert before + timedelta(seconds=delay) <= report.next_attempt_at
        assert report.next_attempt_at <= after + timedelta(seconds=delay)
    assert report.attempts == 20 and delay == 600
    make_due(sessions, report_id)
    assert send_pending(sessions, lambda: gerrit, make_config()) == 1
    assert len(gerrit.reviews) == 1 and gerrit.reviews[0]["labels"] == {"Verified": -1}
    assert only_report(sessions).state == ReportState.SENT


def test_gives_up_loudly_only_after_the_time_budget(sessions: sessionmaker[Session],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    finished_build(sessions, BuildState.FAILED)
    report_id = only_report(sessions).id
    gerrit = RecordingGerrit(fail_times=5)
    # Ten minutes before the budget (6 h) runs out: retried, but not past the deadline.
    make_due(sessions, report_id, age=timedelta(hours=6) - timedelta(minutes=10))
    with sessions() as session, session.begin():
        row = session.get(Report, report_id)
        assert row is not None
        row.attempts = 40
        deadline = row.created_at + timedelta(hours=6)
    send_pending(sessions, lambda: gerrit, make_config())
    report = only_report(sessions)
    assert report.state == ReportState.PENDING
    assert report.next_attempt_at <= deadline
    make_due(sessions, report_id, age=timedelta(hours=6, seconds=1))
    with caplog.at_level(logging.ERROR, logger="ci.report"):
        send_pending(sessions, lambda: gerrit, make_config())
    assert only_report(sessions).state == ReportState.FAILED
    assert any(r.levelno == logging.ERROR and "GIVING UP" in r.getMessage()
               for r in caplog.records)
    assert gerrit.reviews == []


def test_a_report_queued_long_ago_still_gets_one_attempt(sessions: sessionmaker[Session]) -> None:
    finished_build(sessions, BuildState.SUCCEEDED)
    # The CI itself was down for two days: the budget counts failures, not downtime.
    make_due(sessions, only_report(sessions).id, age=timedelta(days=2))
    gerrit = RecordingGerrit()
    assert send_pending(sessions, lambda: gerrit, make_config()) == 1
    assert only_report(sessions).state == ReportState.SENT


class SentMeanwhile(RecordingGerrit):
    """A send slower than its claim: another reporter sent the report meanwhile, then ours fails."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        super().__init__()
        self.sessions = sessions

    def review(self, project: str, change: int, patchset: int, *, message: str,
               labels: dict[str, int], tag: str | None = None) -> None:
        with self.sessions() as session, session.begin():
            row = session.scalar(select(Report))
            assert row is not None
            row.next_attempt_at = utcnow()  # reclaimed by the other reporter ...
            row.state, row.sent_at = ReportState.SENT, utcnow()  # ... which sent it
        raise ConnectionError("gerrit unreachable")


def test_a_failure_after_the_claim_ran_out_keeps_the_other_reporters_outcome(
    sessions: sessionmaker[Session],
) -> None:
    finished_build(sessions, BuildState.SUCCEEDED)
    make_due(sessions, only_report(sessions).id, age=timedelta(days=2))  # past the budget
    send_pending(sessions, lambda: SentMeanwhile(sessions), make_config())
    report = only_report(sessions)
    assert report.state == ReportState.SENT and report.last_error == ""


class SlowGerrit(RecordingGerrit):
    """Thread-safe, and slow enough that concurrent reporters interleave."""

    def __init__(self, fail_times: int = 0) -> None:
        super().__init__(fail_times=fail_times)
        self.lock = threading.Lock()

    def review(self, project: str, change: int, patchset: int, *, message: str,
               labels: dict[str, int], tag: str | None = None) -> None:
        time.sleep(0.01)
        with self.lock:
            super().review(project, change, patchset, message=message, labels=labels, tag=tag)


def test_concurrent_reporters_send_each_report_once(sessions: sessionmaker[Session]) -> None:
    numbers = list(range(20001, 20013))
    for number in numbers:
        finished_build(sessions, BuildState.SUCCEEDED, number=number)
    gerrit = SlowGerrit(fail_times=3)  # some attempts fail and come back later
    config = make_config()
    errors: list[BaseException] = []

    def reporter() -> None:
        # Like one worker process's reporter thread, until the outbox is empty.
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                send_pending(sessions, lambda: gerrit, config)
                with sessions() as session:
                    pending = session.scalars(select(Report).where(
                        Report.state == ReportState.PENDING)).all()
                if not pending:
                    return
                for row in pending:  # skip the backoff: retry at once
                    if row.next_attempt_at > utcnow() + timedelta(seconds=CLAIM_SECONDS / 2):
                        continue  # claimed by a reporter right now
                    with sessions() as session, session.begin():
                        # Only if nobody claimed it since: never break a live claim.
                        session.execute(update(Report).where(
                            Report.id == row.id, Report.state == ReportState.PENDING,
                            Report.next_attempt_at == row.next_attempt_at,
                        ).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reporter) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert not errors
    assert sorted(r["change"] for r in gerrit.reviews) == numbers
    with sessions() as session:
        assert {r.state for r in session.scalars(select(Report))} == {ReportState.SENT}


def test_retry_detects_an_earlier_attempt_that_landed(sessions: sessionmaker[Session]) -> None:
    build_id = finished_build(sessions, BuildState.SUCCEEDED)
    with sessions() as session, session.begin():
        report = session.scalar(select(Report))
        assert report is not None
        report.attempts = 1  # as if the first attempt's acknowledgement was lost
        line = next(ln for ln in report.message.splitlines() if ln.startswith("* "))
    posted = [{"reviewer": {"username": "hyperv-ci"},
               "message": f"Patch Set 2: Verified+1\n\n{line}"}]
    gerrit = RecordingGerrit(posted=posted)
    assert send_pending(sessions, lambda: gerrit, make_config()) == 1
    assert gerrit.reviews == []
    with sessions() as session:
        report = session.scalar(select(Report).where(Report.build_id == build_id))
        assert report is not None and report.state == ReportState.SENT


def test_lost_acknowledgement_against_the_simulated_gerrit(sessions: sessionmaker[Session],
                                                           tmp_path: Path) -> None:
    # The review lands, then the connection drops before we hear so: the retry must
    # find Gerrit's own comment (as Gerrit words it) and not vote a second time.
    key, public = make_client_identity(tmp_path / "id", "hyperv-ci")
    with SimGerrit(tmp_path / "sim", users={"hyperv-ci": public}) as gerrit:
        pushed = gerrit.state.push("openstack/nova", files=["nova/virt/hyperv/ü.py"],
                                   subject="修复", owner="张伟")
        number = int(pushed["change"])
        gerrit.state.push("openstack/nova", files=["nova/virt/hyperv/ü.py"], change=number)
        finished_build(sessions, BuildState.SUCCEEDED, number=number)
        config = make_config().model_copy(update={
            "gerrit": gerrit.client_config("hyperv-ci", key)})

        class AckLost(GerritClient):
            def review(self, *args: Any, **kwargs: Any) -> None:
                super().review(*args, **kwargs)
                raise GerritError("connection reset after the command ran")

        assert send_pending(sessions, lambda: AckLost(config.gerrit), config) == 0
        make_due(sessions, only_report(sessions).id)
        assert send_pending(sessions, lambda: GerritClient(config.gerrit), config) == 1
        report = only_report(sessions)
        assert report.state == ReportState.SENT and report.attempts == 2
        votes = [r for r in gerrit.state.reviews() if r["change"] == number]
        assert [(r["patchset"], r["labels"]) for r in votes] == [(2, {"Verified": 1})]


def test_an_operator_requeues_a_report_that_gave_up(sessions: sessionmaker[Session]) -> None:
    finished_build(sessions, BuildState.FAILED)
    with sessions() as session, session.begin():
        report = session.scalar(select(Report))
        assert report is not None
        report.state, report.attempts = ReportState.FAILED, 9
        report.created_at = utcnow() - timedelta(days=2)  # long past the retry budget
    report_id = only_report(sessions).id
    with sessions() as session, session.begin():
        assert requeue_failed(session, 424242) == []  # no such report
        assert [r.id for r in requeue_failed(session)] == [report_id]
    gerrit = RecordingGerrit()
    assert send_pending(sessions, lambda: gerrit, make_config()) == 1
    assert [r["labels"] for r in gerrit.reviews] == [{"Verified": -1}]
    assert only_report(sessions).state == ReportState.SENT
    with sessions() as session, session.begin():
        assert requeue_failed(session) == []  # nothing failed any more


# -- a vote Gerrit refuses (label permissions) ------------------------------------------------


class SimReviewer:
    """The simulated Gerrit over SSH, and the CI's config for it."""

    def __init__(self, gerrit: SimGerrit, key: Path) -> None:
        self.gerrit = gerrit
        self.key = key
        self.attempts: list[dict[str, Any]] = []

    def config(self, label: str = "Verified") -> Config:
        return make_config().model_copy(update={
            "gerrit": self.gerrit.client_config("hyperv-ci", self.key, label=label)})

    def change(self) -> int:
        pushed = self.gerrit.state.push("openstack/nova", files=["nova/virt/hyperv/ü.py"],
                                        subject="修复 Zoë", owner="张伟")
        number = int(pushed["change"])
        self.gerrit.state.push("openstack/nova", files=["nova/virt/hyperv/ü.py"], change=number)
        return number

    def client(self, config: Config) -> GerritClient:
        """Our real client, noting what the sim had recorded after each `gerrit review`."""
        outer = self

        class Watched(GerritClient):
            def review(self, *args: Any, **kwargs: Any) -> None:
                try:
                    super().review(*args, **kwargs)
                finally:
                    outer.attempts.append({"labels": kwargs.get("labels"),
                                           "recorded": len(outer.gerrit.state.reviews())})

        return Watched(config.gerrit)

    def reviews(self, change: int) -> list[dict[str, Any]]:
        return [r for r in self.gerrit.state.reviews() if r["change"] == change]


@pytest.fixture
def reviewer(tmp_path: Path) -> Iterator[SimReviewer]:
    key, public = make_client_identity(tmp_path / "id", "hyperv-ci")
    with SimGerrit(tmp_path / "sim", users={"hyperv-ci": public}) as gerrit:
        yield SimReviewer(gerrit, key)


def test_a_refused_label_still_posts_the_comment_once(
    sessions: sessionmaker[Session], reviewer: SimReviewer, caplog: pytest.LogCaptureFixture,
) -> None:
    # gerrit.label names a label the CI account was never granted (default: Verified only).
    number = reviewer.change()
    config = reviewer.config(label="Code-Review")
    finished_build(sessions, BuildState.SUCCEEDED, number=number, config=config)
    events = Recorder(reviewer.gerrit)
    with caplog.at_level(logging.ERROR, logger="ci.report"):
        assert send_pending(sessions, lambda: reviewer.client(config), config) == 1
    # The vote fails whole (nothing recorded), then the same comment lands without it.
    assert reviewer.attempts == [{"labels": {"Code-Review": 1}, "recorded": 0},
                                 {"labels": {}, "recorded": 1}]
    [review] = reviewer.reviews(number)
    report = only_report(sessions)
    assert review["labels"] == {} and review["message"] == report.message
    assert "* hyperv-tempest http://logs/1/ : SUCCESS in" in review["message"]
    [added] = events.comment_added()
    assert all(a["value"] == "0" for a in added["approvals"])
    refusal = 'Applying label "Code-Review": 1 is restricted'
    assert report.state == ReportState.LABEL_REFUSED and report.label_refused == refusal
    assert report.last_error == refusal and report.sent_at is not None
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "grant label Code-Review -1..+1 to hyperv-ci on openstack/nova" in error.getMessage()
    assert "gerrit.label" in error.getMessage() and refusal in error.getMessage()
    # Permanent: a day later nothing is sent again, not even by an operator's retry-all.
    make_due(sessions, report.id, age=timedelta(days=1))
    with sessions() as session, session.begin():
        assert requeue_failed(session) == []
    assert send_pending(sessions, lambda: reviewer.client(config), config) == 0
    assert len(reviewer.reviews(number)) == 1 and len(reviewer.attempts) == 2


def test_a_value_beyond_the_grant_is_refused_and_the_granted_one_lands(
    sessions: sessionmaker[Session], reviewer: SimReviewer,
) -> None:
    # An account allowed to give Verified 0..+1 only: the -1 of a failed build is refused.
    reviewer.gerrit.state.grant("hyperv-ci", {"Verified": (0, 1)})
    failed, passed = reviewer.change(), reviewer.change()
    finished_build(sessions, BuildState.FAILED, number=failed)
    finished_build(sessions, BuildState.SUCCEEDED, number=passed)
    config = reviewer.config()
    assert send_pending(sessions, lambda: reviewer.client(config), config) == 2
    assert [r["labels"] for r in reviewer.reviews(failed)] == [{}]
    assert [r["labels"] for r in reviewer.reviews(passed)] == [{"Verified": 1}]
    with sessions() as session:
        states = {r.change_number: (r.state, r.label_refused)
                  for r in session.scalars(select(Report))}
    assert states == {
        failed: (ReportState.LABEL_REFUSED, 'Applying label "Verified": -1 is restricted'),
        passed: (ReportState.SENT, None)}


def test_an_unknown_label_on_a_strict_gerrit(sessions: sessionmaker[Session],
                                             reviewer: SimReviewer) -> None:
    # change.strictLabels refuses a label the project lacks (default Gerrit drops it silently).
    reviewer.gerrit.state.set_strict_labels(True)
    number = reviewer.change()
    config = reviewer.config(label="Hyper-V-CI")
    finished_build(sessions, BuildState.FAILED, number=number, config=config)
    assert send_pending(sessions, lambda: reviewer.client(config), config) == 1
    assert [r["labels"] for r in reviewer.reviews(number)] == [{}]
    report = only_report(sessions)
    assert report.state == ReportState.LABEL_REFUSED
    assert report.label_refused == 'label "Hyper-V-CI" is not a configured label'


def test_a_lost_acknowledgement_of_the_comment_without_the_vote(
    sessions: sessionmaker[Session], reviewer: SimReviewer,
) -> None:
    # The refusal is kept: the retry finds the comment, keeps the mark and posts nothing.
    number = reviewer.change()
    config = reviewer.config(label="Code-Review")
    finished_build(sessions, BuildState.SUCCEEDED, number=number, config=config)

    class AckLost(GerritClient):
        def review(self, *args: Any, **kwargs: Any) -> None:
            super().review(*args, **kwargs)
            raise GerritError("connection reset after the command ran")

    assert send_pending(sessions, lambda: AckLost(config.gerrit), config) == 0
    report = only_report(sessions)
    assert report.state == ReportState.PENDING and report.label_refused
    make_due(sessions, report.id)
    assert send_pending(sessions, lambda: reviewer.client(config), config) == 1
    assert reviewer.attempts == []  # already posted: no second comment, no vote
    assert [r["labels"] for r in reviewer.reviews(number)] == [{}]
    assert only_report(sessions).state == ReportState.LABEL_REFUSED


def test_the_client_types_a_refused_vote(reviewer: SimReviewer) -> None:
    number = reviewer.change()
    client = GerritClient(reviewer.config().gerrit)
    try:
        with pytest.raises(LabelRefused) as info:
            client.review("openstack/nova", number, 1, message="m", labels={"Code-Review": -1})
        refused = info.value
        assert (refused.label, refused.value) == ("Code-Review", -1)
        assert refused.message == 'Applying label "Code-Review": -1 is restricted'
        assert refused.exit_status == 1 and "one or more reviews failed" in refused.stderr
        with pytest.raises(GerritError) as other:  # any other failure stays a plain error
            client.review("openstack/nova", number, 9, message="m", labels={"Verified": 1})
        assert not isinstance(other.value, LabelRefused)
    finally:
        client.close()


class Recorder:
    def __init__(self, gerrit: SimGerrit) -> None:
        self.lines: list[str] = []
        gerrit.state.subscribe(self.lines.append)

    def comment_added(self) -> list[dict[str, Any]]:
        return [e for e in map(json.loads, self.lines) if e["type"] == "comment-added"]


def test_after_a_refusal_the_vote_is_never_sent_again(sessions: sessionmaker[Session],
                                                      reviewer: SimReviewer) -> None:
    # Gerrit refuses the vote, then the comment-only send fails on the way out:
    # the retry sends the comment alone, never the refused vote again.
    number = reviewer.change()
    config = reviewer.config(label="Code-Review")
    finished_build(sessions, BuildState.SUCCEEDED, number=number, config=config)

    class DropsTheSecond(GerritClient):
        calls = 0

        def review(self, *args: Any, **kwargs: Any) -> None:
            DropsTheSecond.calls += 1
            if DropsTheSecond.calls == 2:
                raise GerritError("connection reset before the command ran")
            super().review(*args, **kwargs)

    assert send_pending(sessions, lambda: DropsTheSecond(config.gerrit), config) == 0
    assert reviewer.reviews(number) == []
    make_due(sessions, only_report(sessions).id)
    assert send_pending(sessions, lambda: reviewer.client(config), config) == 1
    assert reviewer.attempts == [{"labels": {}, "recorded": 1}]
    assert only_report(sessions).state == ReportState.LABEL_REFUSED


def test_message_names_flaky_tests_even_on_success() -> None:
    flaky = [f"tempest.api.compute.servers.test_servers.S.test_{i}_实例" for i in range(23)]
    message = format_message("hyperv-ci", BuildState.SUCCEEDED, "* j u : SUCCESS in 1s",
                             "30 tests: 7 success, 23 flaky", flaky)
    assert message.startswith("Build succeeded.")
    assert "Flaky tests (23): failed, then passed when re-run" in message
    assert "- tempest.api.compute.servers.test_servers.S.test_0_实例" in message
    assert "test_20_实例" not in message and "- and 3 more (test-results.txt)" in message
    assert "Flaky" not in format_message("hyperv-ci", BuildState.SUCCEEDED, "* j u : SUCCESS")


def test_queued_report_names_the_builds_flaky_tests(sessions: sessionmaker[Session]) -> None:
    from ci.models import Report, TestResult

    with sessions() as session, session.begin():
        ps = queue.upsert_patchset(session, queue.ChangeInfo(
            number=10009, project="openstack/nova", branch="master", patchset=1))
        build = queue.enqueue(session, ps, "hyperv-tempest", "patchset-created")
        assert build is not None
        queue.claim_next(session, "w", 60)
        done = queue.finish(session, build.id, "w", BuildState.SUCCEEDED, "2 tests")
        assert done is not None
        session.add_all([TestResult(build_id=build.id, test_id="tempest.a.T.test_ok",
                                    status="success"),
                         TestResult(build_id=build.id, test_id="tempest.a.T.test_实例",
                                    status="flaky", details="failed first")])
        report = queue_report(session, done, make_config())
        assert isinstance(report, Report)
        assert report.vote == 1
        assert "Flaky tests (1)" in report.message and "- tempest.a.T.test_实例" in report.message
        assert "test_ok" not in report.message


# -- a closed change gets no vote; a send that can never work stops at once --------------------


def test_a_report_for_a_merged_change_is_not_sent(sessions: sessionmaker[Session],
                                                  reviewer: SimReviewer,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    number = reviewer.change()
    finished_build(sessions, BuildState.SUCCEEDED, number=number)
    reviewer.gerrit.state.merge(number)  # after the build, before the reporter's turn
    config = reviewer.config()
    with caplog.at_level(logging.WARNING, logger="ci.report"):
        assert send_pending(sessions, lambda: reviewer.client(config), config) == 0
    assert reviewer.attempts == [] and reviewer.reviews(number) == []
    report = only_report(sessions)
    assert report.state == ReportState.NOT_SENT and report.attempts == 1
    assert report.last_error == "change closed (MERGED)" and report.sent_at is None
    assert any("NOT sent: change closed (MERGED)" in r.getMessage() for r in caplog.records)
    # Never retried, not even by an operator's retry-all (the change will not reopen).
    make_due(sessions, report.id)
    with sessions() as session, session.begin():
        assert requeue_failed(session) == []
    assert send_pending(sessions, lambda: reviewer.client(config), config) == 0
    assert reviewer.reviews(number) == [] and only_report(sessions).attempts == 1


def test_a_report_for_an_abandoned_change_is_not_sent(sessions: sessionmaker[Session],
                                                      reviewer: SimReviewer) -> None:
    number, other = reviewer.change(), reviewer.change()
    finished_build(sessions, BuildState.FAILED, number=number)
    finished_build(sessions, BuildState.SUCCEEDED, number=other)
    reviewer.gerrit.state.abandon(number)
    config = reviewer.config()
    assert send_pending(sessions, lambda: reviewer.client(config), config) == 1
    assert reviewer.reviews(number) == []
    assert [r["labels"] for r in reviewer.reviews(other)] == [{"Verified": 1}]
    with sessions() as session:
        states = {r.change_number: (r.state, r.last_error)
                  for r in session.scalars(select(Report))}
    assert states == {number: (ReportState.NOT_SENT, "change closed (ABANDONED)"),
                      other: (ReportState.SENT, "")}


def test_the_status_of_every_due_report_is_asked_in_one_query(
        sessions: sessionmaker[Session]) -> None:
    numbers = [30001, 30002, 30003]
    for number in numbers:
        finished_build(sessions, BuildState.SUCCEEDED, number=number)
    gerrit = RecordingGerrit()
    gerrit.status[30002] = "ABANDONED"
    assert send_pending(sessions, lambda: gerrit, make_config()) == 2
    assert gerrit.queries == ["change:30001 OR change:30002 OR change:30003"]
    assert [r["change"] for r in gerrit.reviews] == [30001, 30003]


class RefusesOr(RecordingGerrit):
    """A Gerrit (or proxy) that answers a combined query with a query error."""

    def query(self, query: str, **flags: bool) -> list[dict[str, Any]]:
        if " OR " in query:
            self.queries.append(query)
            raise GerritError("query failed: too many terms", transient=False)
        return super().query(query, **flags)


def test_a_refused_combined_query_is_asked_change_by_change(
        sessions: sessionmaker[Session]) -> None:
    for number in (30001, 30002):
        finished_build(sessions, BuildState.SUCCEEDED, number=number)
    gerrit = RefusesOr()
    gerrit.status[30001] = "MERGED"
    assert send_pending(sessions, lambda: gerrit, make_config()) == 1
    assert gerrit.queries == ["change:30001 OR change:30002", "change:30001", "change:30002"]
    assert [r["change"] for r in gerrit.reviews] == [30002]


class CannotBeAsked(RecordingGerrit):
    """Reviews would go through, but Gerrit cannot answer queries (e.g. its index is down)."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def query(self, query: str, **flags: bool) -> list[dict[str, Any]]:
        raise self.error


@pytest.mark.parametrize("error", [ConnectionResetError("gerrit went away"),
                                   GerritError("query failed: index unavailable",
                                               transient=False)])
def test_a_gerrit_that_cannot_be_asked_is_retried_never_skipped(
        sessions: sessionmaker[Session], error: Exception) -> None:
    finished_build(sessions, BuildState.SUCCEEDED)
    gerrit = CannotBeAsked(error)
    assert send_pending(sessions, lambda: gerrit, make_config()) == 0
    report = only_report(sessions)
    assert gerrit.reviews == []  # not sent without knowing the change is open
    assert report.state == ReportState.PENDING and report.attempts == 1
    assert "cannot ask Gerrit whether the change is open" in report.last_error
    make_due(sessions, report.id)
    assert send_pending(sessions, lambda: RecordingGerrit(), make_config()) == 1
    assert only_report(sessions).state == ReportState.SENT


class FailsReview(RecordingGerrit):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.calls = 0

    def review(self, project: str, change: int, patchset: int, *, message: str,
               labels: dict[str, int], tag: str | None = None) -> None:
        self.calls += 1
        raise self.error


REVIEW_FAILED = "fatal: one or more reviews failed; review output above\n"


@pytest.mark.parametrize(("error", "words"), [
    (GerritError("gerrit review failed", exit_status=1, transient=False), "gerrit review failed"),
    (GerritError("gerrit review failed", exit_status=1,
                 stderr=f'fatal: "10001,2" no such patch set\n{REVIEW_FAILED}'),
     "no such patch set"),
    (GerritError("gerrit review failed", exit_status=1,
                 stderr=f"error: no such change 10001\n{REVIEW_FAILED}"), "no such change"),
])
def test_a_permanent_send_error_fails_at_once(sessions: sessionmaker[Session], error: GerritError,
                                              words: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    finished_build(sessions, BuildState.SUCCEEDED)
    gerrit = FailsReview(error)
    with caplog.at_level(logging.ERROR, logger="ci.report"):
        assert send_pending(sessions, lambda: gerrit, make_config()) == 0
    report = only_report(sessions)
    assert report.state == ReportState.FAILED and report.attempts == 1
    assert words in report.last_error
    assert any("FAILED for good" in r.getMessage() for r in caplog.records)
    make_due(sessions, report.id)
    assert send_pending(sessions, lambda: gerrit, make_config()) == 0
    assert gerrit.calls == 1


def test_a_transient_send_error_is_retried(sessions: sessionmaker[Session]) -> None:
    finished_build(sessions, BuildState.SUCCEEDED)
    gerrit = FailsReview(GerritError("gerrit review failed: EOFError: connection reset"))
    assert send_pending(sessions, lambda: gerrit, make_config()) == 0
    report = only_report(sessions)
    assert report.state == ReportState.PENDING and report.attempts == 1
    assert report.next_attempt_at > utcnow()
    make_due(sessions, report.id)
    assert send_pending(sessions, lambda: RecordingGerrit(), make_config()) == 1
    report = only_report(sessions)
    assert report.state == ReportState.SENT and report.attempts == 2


@pytest.mark.parametrize("refusal", [
    "error: fatal: change is closed\n",  # abandoned between the status check and the send
    "error: fatal: Voting on labels disallowed after submit: Verified\n",  # merged meanwhile
])
def test_gerrit_refusing_a_vote_on_a_closed_change_is_not_sent(
        sessions: sessionmaker[Session], refusal: str) -> None:
    finished_build(sessions, BuildState.SUCCEEDED)
    gerrit = FailsReview(GerritError("gerrit review failed", exit_status=1,
                                     stderr=refusal + REVIEW_FAILED))
    assert send_pending(sessions, lambda: gerrit, make_config()) == 0
    report = only_report(sessions)
    assert report.state == ReportState.NOT_SENT and report.attempts == 1
    assert report.last_error.startswith("change closed (Gerrit: ")


def test_a_change_gerrit_no_longer_has_fails_at_once(sessions: sessionmaker[Session]) -> None:
    finished_build(sessions, BuildState.SUCCEEDED)
    gerrit = RecordingGerrit()
    gerrit.status[10001] = "DELETED"  # the query finds nothing
    assert send_pending(sessions, lambda: gerrit, make_config()) == 0
    report = only_report(sessions)
    assert gerrit.reviews == []
    assert report.state == ReportState.FAILED and report.attempts == 1
    assert report.last_error.startswith("change 10001 is not in Gerrit")


def test_a_missing_patch_set_on_the_simulated_gerrit_fails_at_once(
        sessions: sessionmaker[Session], reviewer: SimReviewer) -> None:
    pushed = reviewer.gerrit.state.push("openstack/nova", files=["nova/virt/hyperv/ü.py"],
                                        subject="only one patch set")
    number = int(pushed["change"])
    finished_build(sessions, BuildState.SUCCEEDED, number=number)  # its patch set 2
    config = reviewer.config()
    assert send_pending(sessions, lambda: reviewer.client(config), config) == 0
    report = only_report(sessions)
    assert report.state == ReportState.FAILED and report.attempts == 1
    assert f'"{number},2" no such patch set' in report.last_error
