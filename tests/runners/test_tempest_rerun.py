"""Failed tests run again: flaky is not failed, twice failed is. The real Worker, the
simulated lab over OpenSSH, the vote comment, test-results.txt and the dashboard."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.config import Config, parse_config
from ci.models import Build, BuildState, BuildStep, TestResult
from dashboard import create_app
from runners import pool
from runners.results import RESULTS_FILE
from runners.worker import Worker
from sim.devstack import make_devstack_node
from sim.gerrit_state import GerritState
from sim.lab import ADMIN_PASSWORD_ENV, SERVICE_PASSWORD_ENV, WINRM_PASSWORD_ENV, SimLab

PROJECT = "openstack/nova"
BRANCH = "unmaintained/2023.1"  # a branch that still has nova's Hyper-V driver
FLAKY = "test_list_networks"
NETWORK_TESTS = r"^tempest\.api\.network\."  # a quick selection: one class, no serial tests


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimLab]:
    monkeypatch.setenv(WINRM_PASSWORD_ENV, "winrm-Secret-123")
    monkeypatch.setenv(ADMIN_PASSWORD_ENV, "admin-Secret-456")
    monkeypatch.setenv(SERVICE_PASSWORD_ENV, "service-Secret-789")
    with SimLab(tmp_path / "lab", hyperv_nodes=1, use_sshd=True) as started:
        yield started


@pytest.fixture
def gerrit(tmp_path: Path) -> GerritState:
    return GerritState(tmp_path / "gerrit")


def make_config(lab: SimLab, gerrit: GerritState, tmp_path: Path, *,
                tempest: dict[str, Any] | None = None, **job: Any) -> Config:
    return parse_config({
        "gerrit": {"host": "127.0.0.1", "username": "ci", "key_file": "/nonexistent/key",
                   "known_hosts": "/nonexistent/known_hosts",
                   "git_url": gerrit.root.resolve().as_uri() + "/git/{project}.git"},
        "projects": [{"name": PROJECT, "jobs": ["hyperv"]}],
        "jobs": {"hyperv": {
            "type": "devstack-hyperv", **lab.job_overrides(), "hyperv_nodes": 1,
            "stack_timeout": 60, "services_timeout": 5, "command_timeout": 30,
            "tempest": {"concurrency": 2, "timeout": 120, "include_regex": NETWORK_TESTS,
                        "serial": [], **(tempest or {})}, **job}},
        "nodes": lab.node_configs(),
        "logs": {"dir": str(tmp_path / "logs"), "url": "http://logs.example.org/"},
        "worker": {"lease_seconds": 30, "max_attempts": 3,
                   "git_cache_dir": str(tmp_path / "git-cache")},
    })


def build_once(config: Config, sessions: sessionmaker[Session], gerrit: GerritState) -> Build:
    """Push a change, queue the job as the listener would, and let the Worker run it."""
    with sessions() as session, session.begin():
        pool.sync_nodes(session, config.nodes)
    pushed = gerrit.push(PROJECT, BRANCH, files={"nova/virt/hyperv/vmops.py": "# 实例\n"},
                         subject="Hyper-V: 修复 flaky « tests »", owner="Zoë")
    with sessions() as session, session.begin():
        patchset = queue.upsert_patchset(session, queue.ChangeInfo(
            number=int(pushed["change"]), project=PROJECT, branch=BRANCH,
            patchset=int(pushed["patchset"]), subject="s", owner_name="Zoë",
            ref=str(pushed["ref"]), revision=str(pushed["revision"])))
        assert queue.enqueue(session, patchset, "hyperv", "patchset-created") is not None
    assert Worker(config, sessions, name="w1").run_once()
    with sessions() as session:
        build = session.scalars(select(Build).order_by(Build.id)).first()
        assert build is not None
        build.report, build.tests  # noqa: B018 - load before the session closes
        session.expunge(build)
        return build


def results_file(build: Build) -> str:
    assert build.log_path
    path = Path(build.log_path) / RESULTS_FILE
    if path.exists():
        return path.read_text(encoding="utf-8")
    return gzip.decompress(path.with_name(RESULTS_FILE + ".gz").read_bytes()).decode("utf-8")


def tempest_log(sessions: sessionmaker[Session], build: Build) -> str:
    with sessions() as session:
        step = session.scalars(select(BuildStep).where(BuildStep.build_id == build.id,
                                                       BuildStep.name == "tempest")).one()
        assert step.log_name and build.log_path
        path = Path(build.log_path) / step.log_name
    if path.exists():
        return path.read_text(encoding="utf-8")
    return gzip.decompress(path.with_name(path.name + ".gz").read_bytes()).decode("utf-8")


def statuses(build: Build) -> dict[str, str]:
    return {t.test_id.split("[")[0].rsplit(".", 1)[1]: t.status for t in build.tests}


def test_a_test_passing_on_re_run_is_flaky_not_failed(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    (lab.faults_dir / "tempest-flaky").write_text(FLAKY + "\n", encoding="utf-8")
    config = make_config(lab, gerrit, tmp_path)
    build = build_once(config, sqlite_sessions, gerrit)

    assert build.state == BuildState.SUCCEEDED, build.summary
    assert statuses(build)[FLAKY] == "flaky"
    assert {s for n, s in statuses(build).items() if n != FLAKY} == {"success"}
    flaky = next(t for t in build.tests if t.status == "flaky")
    assert "BuildErrorException" in flaky.details  # why it failed first stays visible
    assert f"flaky (passed when re-run): NetworksTest.{FLAKY}" in build.summary
    # The vote: +1, and the comment names the flaky test.
    assert build.report is not None and build.report.vote == 1
    assert "Build succeeded." in build.report.message
    assert "Flaky tests (1)" in build.report.message and flaky.test_id in build.report.message
    # test-results.txt at the top of the log tree.
    text = results_file(build)
    assert "FLAKY TESTS (1)" in text and f"FLAKY: {flaky.test_id}" in text
    assert "FAILED TESTS" not in text
    # Only the failed test was re-run, with --load-list.
    log = tempest_log(sqlite_sessions, build)
    assert "re-running 1 failed tests (re-run 1 of 1)" in log
    assert "re-run 1 of 1 failed tests exited" in log
    # The dashboard's build page lists it under Flaky, not Failures.
    client = create_app(config, sessions=sqlite_sessions, test_config={"TESTING": True}
                        ).test_client()
    html = client.get(f"/builds/{build.id}").get_data(as_text=True)
    assert "<h3>Flaky</h3>" in html and "<h3>Failures</h3>" not in html
    assert flaky.test_id in html.split("<h3>Flaky</h3>", 1)[1].split("</ul>", 1)[0]
    assert "flaky: 1" in html


def test_a_test_failing_on_re_run_too_is_failed(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    (lab.faults_dir / "tempest-fail").write_text(FLAKY + "\n", encoding="utf-8")
    build = build_once(make_config(lab, gerrit, tmp_path), sqlite_sessions, gerrit)

    assert build.state == BuildState.FAILED, build.summary
    assert statuses(build)[FLAKY] == "fail"
    failed = next(t for t in build.tests if t.status == "fail")
    assert "re-run 1: fail" in failed.details
    assert build.report is not None and build.report.vote == -1
    assert "Flaky" not in build.report.message
    assert f"FAIL: {failed.test_id}" in results_file(build)
    assert "re-running 1 failed tests" in tempest_log(sqlite_sessions, build)


def test_no_re_run_makes_a_flaky_test_a_failure(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    (lab.faults_dir / "tempest-flaky").write_text(FLAKY + "\n", encoding="utf-8")
    config = make_config(lab, gerrit, tmp_path, tempest={"rerun_failed": 0})
    build = build_once(config, sqlite_sessions, gerrit)

    assert build.state == BuildState.FAILED, build.summary
    assert statuses(build)[FLAKY] == "fail"
    assert build.report is not None and build.report.vote == -1
    assert "re-running" not in tempest_log(sqlite_sessions, build)


def test_tempest_nowhere_devstack_puts_it_is_a_ci_error(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    # A stable branch: devstack installs tempest only in its tox venv under
    # TEMPEST_DIR. The job's tempest_dir names another (existing) directory.
    paths = make_devstack_node(lab.devstack.root, lab.lab_dir, devstack_branch="stable/2025.1")
    elsewhere = paths.root / "not-tempest"
    elsewhere.mkdir()
    config = make_config(lab, gerrit, tmp_path, tempest_dir=str(elsewhere))
    build = build_once(config, sqlite_sessions, gerrit)

    assert build.state == BuildState.ERROR, build.summary
    assert "tempest is not installed where devstack puts it" in build.summary
    assert build.report is None  # an error is retried, never voted on
    with sqlite_sessions() as session:
        assert list(session.scalars(select(TestResult))) == []
