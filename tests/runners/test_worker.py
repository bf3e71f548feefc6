"""The worker with the `local` job: claim → run → record → report, and its failure paths."""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.config import Config, parse_config
from ci.models import Build, BuildState, BuildStep, Report, ReportState, TestResult, utcnow
from ci.reaper import reap_once
from ci.report import queue_report, send_pending
from runners import worker as worker_module
from runners.base import BuildContext, InfraError, JobResult, Runner
from runners.worker import Worker

SUBJECT = "修复 VHD 格式 'quoted' $(rm -rf /) Zoë"


def make_config(tmp_path: Path, command: list[str], timeout: int = 30) -> Config:
    return parse_config({
        "gerrit": {"host": "h", "username": "hyperv-ci", "key_file": "k", "known_hosts": "kh"},
        "projects": [{"name": "openstack/nova", "jobs": ["unit"]}],
        "jobs": {"unit": {"type": "local", "command": command, "timeout": timeout}},
        "logs": {"dir": str(tmp_path / "logs"), "url": "http://logs.example.org/"},
        "worker": {"lease_seconds": 6, "max_attempts": 2},
    })


def enqueue(sessions: sessionmaker[Session], ps: int = 1) -> int:
    with sessions() as session, session.begin():
        patchset = queue.upsert_patchset(session, queue.ChangeInfo(
            number=10001, project="openstack/nova", branch="master", patchset=ps,
            subject=SUBJECT, owner_name="张伟"))
        build = queue.enqueue(session, patchset, "unit", "patchset-created")
        assert build is not None
        return build.id


def load(sessions: sessionmaker[Session], build_id: int) -> Build:
    with sessions() as session:
        build = session.get(Build, build_id)
        assert build is not None
        build.steps, build.tests, build.report  # noqa: B018 - load before the session closes
        return build


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_success_records_step_logs_and_a_plus_one(sqlite_sessions: sessionmaker[Session],
                                                  tmp_path: Path) -> None:
    code = "import os; print('subject:', os.environ['HYPERV_CI_SUBJECT'])"
    config = make_config(tmp_path, py(code))
    build_id = enqueue(sqlite_sessions)
    assert Worker(config, sqlite_sessions, name="w1").run_once()
    build = load(sqlite_sessions, build_id)
    assert build.state == BuildState.SUCCEEDED
    assert build.log_url == f"http://logs.example.org/10001/1/unit-{build_id}/"
    (step,) = build.steps
    assert step.state == "succeeded" and step.exit_code == 0
    log = (Path(build.log_path) / step.log_name).read_text(encoding="utf-8")
    assert f"subject: {SUBJECT}" in log
    assert (Path(build.log_path) / "index.html").exists()
    assert build.report is not None and build.report.vote == 1
    assert f"* unit {build.log_url} : SUCCESS in" in build.report.message


def test_failure_is_a_minus_one(sqlite_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    config = make_config(tmp_path, py("import sys; print('boom'); sys.exit(3)"))
    build_id = enqueue(sqlite_sessions)
    Worker(config, sqlite_sessions, name="w1").run_once()
    build = load(sqlite_sessions, build_id)
    assert build.state == BuildState.FAILED
    assert build.steps[0].exit_code == 3
    assert build.report is not None and build.report.vote == -1


def test_timeout_kills_the_command(sqlite_sessions: sessionmaker[Session],
                                   tmp_path: Path) -> None:
    marker = tmp_path / "still-running"
    code = f"import time, pathlib; time.sleep(30); pathlib.Path({str(marker)!r}).write_text('x')"
    config = make_config(tmp_path, py(code), timeout=1)
    build_id = enqueue(sqlite_sessions)
    Worker(config, sqlite_sessions, name="w1").run_once()
    build = load(sqlite_sessions, build_id)
    assert build.state == BuildState.FAILED
    assert "TIMED_OUT" in build.summary
    assert not marker.exists()


def test_subunit_results_are_stored(sqlite_sessions: sessionmaker[Session],
                                    tmp_path: Path) -> None:
    code = (
        "import os, subunit, datetime\n"
        "log_dir = os.environ['HYPERV_CI_LOG_DIR']\n"
        "out = open(os.path.join(log_dir, 'testrepository.subunit'), 'wb')\n"
        "s = subunit.StreamResultToBytes(out)\n"
        "now = datetime.datetime.now(datetime.timezone.utc)\n"
        "s.status(test_id='tempest.api.compute.test_a', test_status='inprogress', timestamp=now)\n"
        "s.status(test_id='tempest.api.compute.test_a', test_status='success', timestamp=now)\n"
        "s.status(test_id='tempest.api.compute.test_b', test_status='inprogress', timestamp=now)\n"
        "s.status(test_id='tempest.api.compute.test_b', test_status='fail', timestamp=now,\n"
        "         file_name='traceback', mime_type='text/plain;charset=utf8',\n"
        "         file_bytes='Traceback: 实例 boom'.encode())\n"
        "out.close()\n"
    )
    config = make_config(tmp_path, py(code))
    build_id = enqueue(sqlite_sessions)
    Worker(config, sqlite_sessions, name="w1").run_once()
    build = load(sqlite_sessions, build_id)
    assert build.state == BuildState.FAILED  # exit 0, but the stream has a failure
    assert sorted((t.test_id, t.status) for t in build.tests) == [
        ("tempest.api.compute.test_a", "success"), ("tempest.api.compute.test_b", "fail")]
    # Published beside the logs, listed first: why it failed, in one click.
    assert build.log_path is not None
    report = (Path(build.log_path) / "test-results.txt").read_text(encoding="utf-8")
    assert "FAIL: tempest.api.compute.test_b\n" in report and "实例 boom" in report
    assert report.index("FAIL:") < report.index("ALL TESTS")
    index = (Path(build.log_path) / "index.html").read_text(encoding="utf-8")
    assert index.index("test-results.txt") < index.index(".log")


class BrokenRunner(Runner[None]):
    def prepare(self, ctx: BuildContext) -> None:
        pass

    def run(self, ctx: BuildContext, prepared: None) -> JobResult:
        raise InfraError("node unreachable")


def test_error_is_retried_then_reported_without_a_vote(sqlite_sessions: sessionmaker[Session],
                                                       tmp_path: Path) -> None:
    config = make_config(tmp_path, ["true"])
    first = enqueue(sqlite_sessions)
    worker = Worker(config, sqlite_sessions, name="w1",
                    runner_factory=lambda _c, _j: BrokenRunner())
    assert worker.run_once()
    assert load(sqlite_sessions, first).state == BuildState.ERROR
    assert load(sqlite_sessions, first).report is None  # retried instead
    assert worker.run_once()
    with sqlite_sessions() as session:
        second = session.scalar(select(Build).where(Build.id != first))
        assert second is not None and second.attempt == 2 and second.state == BuildState.ERROR
        report = session.scalar(select(Report))
        assert report is not None and report.build_id == second.id and report.vote is None
    assert not worker.run_once()  # max_attempts (2) reached: nothing more queued


def test_superseded_while_running_stops_and_never_reports(
    sqlite_sessions: sessionmaker[Session], tmp_path: Path,
) -> None:
    config = make_config(tmp_path, py("import time; print('started', flush=True); time.sleep(30)"))
    build_id = enqueue(sqlite_sessions, ps=1)
    worker = Worker(config, sqlite_sessions, name="w1")
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with sqlite_sessions() as session:
            if session.scalar(select(BuildStep).where(BuildStep.build_id == build_id)):
                break
        time.sleep(0.1)
    enqueue(sqlite_sessions, ps=2)  # the new patchset supersedes the running build
    thread.join(timeout=30)
    assert not thread.is_alive()
    build = load(sqlite_sessions, build_id)
    assert build.state == BuildState.SUPERSEDED
    assert build.report is None
    with sqlite_sessions() as session:
        assert session.scalar(select(TestResult)) is None


def test_worker_prunes_old_log_trees_when_it_starts(sqlite_sessions: sessionmaker[Session],
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(tmp_path, ["true"])
    old = config.logs.dir / "10001" / "1" / "unit-1"
    old.mkdir(parents=True)
    past = time.time() - (config.logs.retention_days + 1) * 86400
    os.utime(old, (past, past))
    # However recently the host booted (monotonic time starts near zero).
    monkeypatch.setattr(time, "monotonic", lambda: 5.0)
    stop = threading.Event()
    Worker(config, sqlite_sessions, name="w1").run(stop, on_idle=stop.set)
    assert not old.exists()


def wait_for(predicate: Any, timeout: float = 30) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds passed (a bound, not a check)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def test_lease_is_renewed_until_a_slow_publish_is_recorded(
    sqlite_sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = make_config(tmp_path, ["true"])  # lease: 6 s
    build_id = enqueue(sqlite_sessions)
    # Another process's reaper (ci/reaper.py) runs all along.
    real_publish = worker_module.publish_logs
    published = threading.Event()

    def slow_publish(*args: Any, **kwargs: Any) -> None:
        with sqlite_sessions() as session:
            build = session.get(Build, build_id)
            assert build is not None and build.lease_expires_at is not None
            expiry = build.lease_expires_at
        # Publish for longer than the lease the build had when the job ended.
        while utcnow() < expiry + timedelta(seconds=2):
            assert reap_once(sqlite_sessions, config.worker.max_attempts) == 0
            time.sleep(0.2)
        assert reap_once(sqlite_sessions, config.worker.max_attempts) == 0
        real_publish(*args, **kwargs)
        published.set()

    monkeypatch.setattr(worker_module, "publish_logs", slow_publish)
    assert Worker(config, sqlite_sessions, name="w1").run_once()
    assert published.is_set()
    build = load(sqlite_sessions, build_id)
    assert build.state == BuildState.SUCCEEDED and build.worker == "w1"
    assert build.report is not None and build.report.vote == 1
    with sqlite_sessions() as session:
        assert len(session.scalars(select(Build)).all()) == 1  # not reaped: no retry queued


class RecordingGerrit:
    """A thread-safe fake Gerrit at the reporter's I/O seam."""

    def __init__(self) -> None:
        self.reviews: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def review(self, project: str, change: int, patchset: int, *, message: str,
               labels: dict[str, int], tag: str | None = None) -> None:
        with self.lock:
            self.reviews.append((change, patchset))

    def query(self, query: str, **flags: bool) -> list[dict[str, Any]]:
        # The reporter's status check (`change:1 OR change:2`): every change is open.
        return [{"number": int(term.removeprefix("change:")), "status": "NEW"}
                for term in query.split(" OR ")]


def test_reports_go_out_while_a_build_runs(sqlite_sessions: sessionmaker[Session],
                                          tmp_path: Path) -> None:
    release = tmp_path / "release"
    code = (f"import pathlib, time\n"
            f"while not pathlib.Path({str(release)!r}).exists(): time.sleep(0.1)\n")
    config = make_config(tmp_path, py(code))
    config = config.model_copy(update={"reporter": config.reporter.model_copy(
        update={"poll_interval": 0.2})})
    running_id = enqueue(sqlite_sessions, ps=1)
    gerrit = RecordingGerrit()
    stop = threading.Event()
    worker = Worker(config, sqlite_sessions, name="w1")
    thread = threading.Thread(target=worker.run, args=(stop,), kwargs={
        "report": lambda: send_pending(sqlite_sessions, lambda: gerrit, config)})
    thread.start()
    try:
        assert wait_for(lambda: load(sqlite_sessions, running_id).state == BuildState.RUNNING)
        # A vote of another change is queued while the build runs (and runs on).
        with sqlite_sessions() as session, session.begin():
            patchset = queue.upsert_patchset(session, queue.ChangeInfo(
                number=10002, project="openstack/nova", branch="master", patchset=1,
                subject=SUBJECT))
            done = queue.enqueue(session, patchset, "unit", "patchset-created")
            assert done is not None
            done.state, done.log_url = BuildState.SUCCEEDED, "http://logs.example.org/x/"
            session.flush()
            assert queue_report(session, done, config) is not None
        assert wait_for(lambda: gerrit.reviews == [(10002, 1)])
        assert load(sqlite_sessions, running_id).state == BuildState.RUNNING
        # And the build's own vote follows its end.
        release.write_text("go")
        assert wait_for(lambda: (10001, 1) in gerrit.reviews)
    finally:
        release.write_text("go")
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert gerrit.reviews == [(10002, 1), (10001, 1)]
    with sqlite_sessions() as session:
        assert {r.state for r in session.scalars(select(Report))} == {ReportState.SENT}


def test_a_worker_started_while_the_database_is_down_waits_for_it(
        sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(tmp_path, py("pass"))
    calls: list[int] = []
    real_sync = worker_module.sync_nodes

    def sync_while_down(session: Session, *args: Any) -> None:
        calls.append(1)
        if len(calls) == 1:  # the first attempt meets a database that is not there
            raise OperationalError("SELECT", {}, Exception("connection refused"))
        real_sync(session, *args)

    monkeypatch.setattr(worker_module, "sync_nodes", sync_while_down)
    stop = threading.Event()
    worker = Worker(config, sessions, name="w-start")
    thread = threading.Thread(target=worker._sync_nodes, args=(stop,))
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and len(calls) == 2
