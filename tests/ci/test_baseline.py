"""Baseline builds: scheduled once per period by any number of processes, run on the
branch tip, kept as the branch's baseline, compared with changes' failures."""

from __future__ import annotations

import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.app.cli import main
from ci.baseline import (
    change_info_of,
    latest_baseline,
    log_path_of,
    period_slot,
    queue_baseline,
    queue_due,
    start_schedule,
)
from ci.changes import ChangeInfo
from ci.config import Config, ConfigError, parse_config
from ci.models import (
    BaselineRun,
    Build,
    BuildState,
    FailureVerdict,
    Report,
    SignatureMatch,
    TestResult,
)
from ci.report import queue_report
from ci.signatures import parse_signatures
from runners.merger import prepare_change

BRANCH = "unmaintained/2023.1"
RESIZE = "tempest.api.compute.servers.test_server_actions.T.test_resize_server_confirm"
LIST = "tempest.api.compute.servers.test_servers.T.test_list_servers"
BUG = "https://bugs.launchpad.net/nova/+bug/2"


def make_config(**extra: object) -> Config:
    return parse_config({
        "gerrit": {"host": "h", "username": "hyperv-ci", "key_file": "k", "known_hosts": "kh"},
        "projects": [{"name": "openstack/nova", "branches": ["^unmaintained/2023\\.1$"],
                      "jobs": ["hyperv-tempest", "other"]}],
        "jobs": {"hyperv-tempest": {"type": "local", "command": ["true"]},
                 "other": {"type": "local", "command": ["true"]}},
        "baselines": {"every_hours": 6, "branches": [
            {"project": "openstack/nova", "branch": BRANCH, "jobs": ["hyperv-tempest"]}]},
        **extra,
    })


def test_baselines_are_checked_against_the_projects_on_load() -> None:
    base = make_config().model_dump(mode="json", exclude={"baselines"})
    for target, words in [
        ({"project": "openstack/unknown", "branch": BRANCH}, "not a configured project"),
        ({"project": "openstack/nova", "branch": "master"}, "not a branch openstack/nova watches"),
        ({"project": "openstack/nova", "branch": BRANCH, "jobs": ["nope"]}, "unknown job"),
    ]:
        with pytest.raises(ConfigError, match=words):
            parse_config({**base, "baselines": {"branches": [target]}})
    with pytest.raises(ConfigError, match="every_hours"):
        parse_config({**base, "baselines": {"every_hours": 0}})
    with pytest.raises(ConfigError, match="explained"):
        parse_config({**base, "verdict": {"explained": "minus-one"}})


def count_baselines(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Build)
                                  .where(Build.baseline_id.is_not(None))) or 0)


def test_a_period_is_queued_once_by_processes_racing_and_restarting(
        sessions: sessionmaker[Session]) -> None:
    config = make_config()
    now = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def process() -> None:
        try:
            barrier.wait(timeout=10)
            with sessions() as session, session.begin():
                queue_due(session, config, now)
        except BaseException as exc:  # every failure is the finding
            errors.append(exc)

    threads = [threading.Thread(target=process) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert count_baselines(sessions) == 1
    # A process restarted later in the same period queues nothing more; the next period does.
    with sessions() as session, session.begin():
        assert queue_due(session, config, now + timedelta(hours=4)) == []
    with sessions() as session, session.begin():
        (later,) = queue_due(session, config, now + timedelta(hours=6))
        assert later.job == "hyperv-tempest" and later.patchset_id is None
    assert count_baselines(sessions) == 2


def test_period_slots_are_the_same_everywhere_within_a_period() -> None:
    six = 6 * 3600
    start = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)  # a multiple of 6 h since the epoch
    assert period_slot(start, six) == period_slot(start + timedelta(hours=5, minutes=59), six)
    assert period_slot(start, six) != period_slot(start + timedelta(hours=6), six)
    assert period_slot(start, six).startswith("every-6h:")


def finish(sessions: sessionmaker[Session], build_id: int, state: BuildState,
           tests: dict[str, str], at: datetime | None = None, log_path: str | None = None) -> None:
    with sessions() as session, session.begin():
        claimed = queue.claim_next(session, "w", 60)
        assert claimed is not None and claimed.id == build_id
        done = queue.finish(session, build_id, "w", state, "s", log_url=f"http://logs/{build_id}/",
                            log_path=log_path)
        assert done is not None
        if at is not None:
            done.finished_at = at
        done.tested_commit = "c" * 40
        session.add_all(TestResult(build_id=build_id, test_id=t, status=s)
                        for t, s in tests.items())
        session.flush()
        assert queue_report(session, done, make_config()) is None  # a baseline is not reported


def test_the_latest_finished_baseline_of_the_job_and_branch_is_the_evidence(
        sessions: sessionmaker[Session]) -> None:
    now = datetime.now(UTC)
    with sessions() as session, session.begin():
        first = queue_baseline(session, "openstack/nova", BRANCH, "hyperv-tempest", "s1")
        assert first is not None
        first_id = first.id
    finish(sessions, first_id, BuildState.FAILED, {RESIZE: "fail", LIST: "success"},
           at=now - timedelta(hours=2))
    with sessions() as session, session.begin():
        other_job = queue_baseline(session, "openstack/nova", BRANCH, "other", "s1")
        errored = queue_baseline(session, "openstack/nova", BRANCH, "hyperv-tempest", "s2")
        assert other_job is not None and errored is not None
        ids = (other_job.id, errored.id)
    finish(sessions, ids[0], BuildState.FAILED, {LIST: "fail"}, at=now)
    finish(sessions, ids[1], BuildState.ERROR, {}, at=now)
    with sessions() as session:
        evidence = latest_baseline(session, "openstack/nova", BRANCH, "hyperv-tempest")
        assert evidence is not None
        assert (evidence.build_id, evidence.failed) == (first_id, frozenset({RESIZE}))
        assert evidence.commit == "c" * 40 and evidence.url == f"http://logs/{first_id}/"
        assert latest_baseline(session, "openstack/nova", "stable/zed", "hyperv-tempest") is None
        assert session.scalar(select(func.count()).select_from(Report)) == 0


def change_build(sessions: sessionmaker[Session], tests: dict[str, str],
                 config: Config) -> Report | None:
    with sessions() as session, session.begin():
        ps = queue.upsert_patchset(session, ChangeInfo(
            number=10001, project="openstack/nova", branch=BRANCH, patchset=1,
            subject="Ünïcode 中文"))
        build = queue.enqueue(session, ps, "hyperv-tempest", "patchset-created")
        assert build is not None
        queue.claim_next(session, "w", 60)
        done = queue.finish(session, build.id, "w", BuildState.FAILED, "failed",
                            log_url=f"http://logs/{build.id}/")
        assert done is not None
        session.add_all(TestResult(build_id=build.id, test_id=t, status=s)
                        for t, s in tests.items())
        session.flush()
        report = queue_report(session, done, config)
        if report is not None:
            session.expunge(report)
        return report


def test_a_change_failing_what_the_tip_fails_gets_verified_0_naming_the_baseline(
        sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        tip = queue_baseline(session, "openstack/nova", BRANCH, "hyperv-tempest", "s1")
        assert tip is not None
        tip_id = tip.id
    finish(sessions, tip_id, BuildState.FAILED, {RESIZE: "fail"})
    report = change_build(sessions, {RESIZE: "fail", LIST: "success"}, make_config())
    assert report is not None and (report.label, report.vote) == ("Verified", 0)
    assert f"(baseline build {tip_id}) http://logs/{tip_id}/" in report.message
    assert ": FAILURE in" in report.message
    with sessions() as session:
        stored = session.scalars(select(FailureVerdict.kind)).all()
        assert stored == ["also-failing-on-tip"]
    # With the no-vote policy the same comment goes without a vote.
    quiet = make_config(verdict={"explained": "no-vote"})
    report = change_build(sessions, {RESIZE: "fail"}, quiet)
    assert report is not None and report.vote is None and report.label is None


def test_a_new_failure_beside_a_tip_failure_still_gets_minus_one(
        sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        tip = queue_baseline(session, "openstack/nova", BRANCH, "hyperv-tempest", "s1")
        assert tip is not None
        tip_id = tip.id
    finish(sessions, tip_id, BuildState.FAILED, {RESIZE: "fail"})
    report = change_build(sessions, {RESIZE: "fail", LIST: "fail"}, make_config())
    assert report is not None and report.vote == -1
    assert f"New failures (1): these count against the change:\n- {LIST}" in report.message


def test_failed_baselines_keep_their_signature_matches(sessions: sessionmaker[Session],
                                                       tmp_path: Path) -> None:
    config = make_config()
    config.verdict._known = parse_signatures([{"id": "tip-bug", "bug": BUG,
                                               "test": "test_resize"}], "s")
    with sessions() as session, session.begin():
        tip = queue_baseline(session, "openstack/nova", BRANCH, "hyperv-tempest", "s1")
        assert tip is not None
        tip_id = tip.id
        queue.claim_next(session, "w", 60)
        done = queue.finish(session, tip_id, "w", BuildState.FAILED, "s")
        assert done is not None
        session.add(TestResult(build_id=tip_id, test_id=RESIZE, status="fail"))
        session.flush()
        assert queue_report(session, done, config) is None
    with sessions() as session:
        matches = session.scalars(select(SignatureMatch)).all()
        assert [(m.build_id, m.signature_id, m.test_id) for m in matches] == [
            (tip_id, "tip-bug", RESIZE)]
        assert session.scalars(select(FailureVerdict)).all() == []


def test_an_errored_baseline_is_retried_as_the_same_run(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        tip = queue_baseline(session, "openstack/nova", "unmaintained/2023.1", "hyperv-tempest",
                             "s1")
        assert tip is not None
        queue.claim_next(session, "w", 60)
        done = queue.finish(session, tip.id, "w", BuildState.ERROR, "node down")
        assert done is not None
        retry = queue.retry_after_error(session, done, 3)
        assert retry is not None and retry.baseline_id == tip.baseline_id
        assert retry.patchset_id is None
        # While the retry waits, another attempt of the run is not queued twice.
        assert queue.retry_after_error(session, done, 3) is None


def test_a_baseline_build_runs_the_branch_itself(sessions: sessionmaker[Session]) -> None:
    branch = "stable/ünïcode 分支"
    with sessions() as session, session.begin():
        build = queue_baseline(session, "openstack/nova", branch, "hyperv-tempest", "s1")
        assert build is not None
        info = change_info_of(build)
        assert info.branch_tip and info.ref == f"refs/heads/{branch}" and info.number == 0
        path = log_path_of(build)
        assert path == f"baseline/openstack_nova/stable__n_code___/hyperv-tempest-{build.id}"
        run = session.get(BaselineRun, build.baseline_id)
        assert run is not None and run.branch == branch


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_the_merger_tests_the_tip_as_it_is(tmp_path: Path) -> None:
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    git("init", "--quiet", "-b", BRANCH, cwd=upstream)
    (upstream / "a.py").write_text("x = 1\n", encoding="utf-8")
    git("add", "a.py", cwd=upstream)
    git("-c", "user.name=t", "-c", "user.email=t@example", "commit", "--quiet", "-m", "tip",
        cwd=upstream)
    tip = git("rev-parse", "HEAD", cwd=upstream)
    info = ChangeInfo(number=0, project="openstack/nova", branch=BRANCH, patchset=0,
                      ref=f"refs/heads/{BRANCH}")
    prepared = prepare_change(upstream.as_uri(), info, tmp_path / "work")
    assert prepared.merge_commit == prepared.base_commit == tip
    assert prepared.bundle.is_file()
    # A ref that is neither the branch nor a change's is still refused.
    bad = ChangeInfo(number=0, project="openstack/nova", branch=BRANCH, patchset=0,
                     ref="refs/heads/other")
    with pytest.raises(Exception, match="not a Gerrit change ref"):
        prepare_change(upstream.as_uri(), bad, tmp_path / "work2")


def test_the_cli_queues_a_baseline_and_lists_it(tmp_path: Path) -> None:
    raw = make_config().model_dump(mode="json")
    raw["database"] = {"url": f"sqlite:///{tmp_path / 'ci.db'}"}
    import yaml

    (tmp_path / "ci.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    runner = CliRunner()
    ran = runner.invoke(main, ["-c", str(tmp_path / "ci.yaml"), "baseline", "run", "--project",
                               "openstack/nova", "--branch", BRANCH])
    assert ran.exit_code == 0, ran.output
    assert ran.output.count("queued baseline build") == 2  # both of the project's jobs
    again = runner.invoke(main, ["-c", str(tmp_path / "ci.yaml"), "baseline", "run",
                                 "--project", "openstack/nova", "--branch", BRANCH, "--job",
                                 "other"])
    assert again.exit_code == 0 and again.output.count("queued") == 1  # by hand: not deduped
    refused = runner.invoke(main, ["-c", str(tmp_path / "ci.yaml"), "baseline", "run",
                                   "--project", "openstack/nova", "--branch", "master"])
    assert refused.exit_code == 2 and "does not watch branch 'master'" in refused.output
    listed = runner.invoke(main, ["-c", str(tmp_path / "ci.yaml"), "baseline", "list"])
    assert listed.exit_code == 0 and listed.output.count(BRANCH) == 3


def test_the_schedule_runs_in_a_thread_until_stopped(
        sqlite_sessions: sessionmaker[Session]) -> None:
    stop = threading.Event()
    thread = start_schedule(make_config(), sqlite_sessions, stop)
    assert thread is not None
    deadline = time.monotonic() + 30
    while count_baselines(sqlite_sessions) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive() and count_baselines(sqlite_sessions) == 1
    # Nothing scheduled: no thread at all.
    unscheduled = make_config(baselines={"branches": []})
    assert start_schedule(unscheduled, sqlite_sessions, threading.Event()) is None
