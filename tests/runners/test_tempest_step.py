"""The tempest step: the job's tempest.sh over OpenSSH against the simulated controller,
its streams parsed, failed tests re-run, flaky told from failed."""

from __future__ import annotations

import shlex
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from ci.config import DevstackHypervJob
from ci.models import Build, BuildStep, Change, Patchset, StepState
from runners.base import CommandResult, InfraError, JobResult, Outcome
from runners.job_values import (
    tempest_exclude_file,
    tempest_parallel_exclude_file,
    tempest_serial_regex,
)
from runners.render import make_environment
from runners.ssh import SSHExecutor
from runners.steps import StepHandle, StepRecorder
from runners.subunit import parse_subunit
from runners.tempest_step import TempestStep
from sim.devstack import DevstackNodePaths, make_devstack_node

pytestmark = pytest.mark.sshd

LOCAL_CONF = ("[[local|localrc]]\nADMIN_PASSWORD=pw\ndisable_service n-cpu\n"
              "DOWNLOAD_DEFAULT_IMAGES=False\n")
FLAKY = "test_list_networks"


@pytest.fixture
def node(tmp_path: Path, executor: SSHExecutor) -> DevstackNodePaths:
    """A stacked simulated controller (its stack.sh installed tempest)."""
    paths = make_devstack_node(tmp_path / "controller 节点", tmp_path / "lab")
    executor.put(LOCAL_CONF.encode(), str(paths.devstack_dir / "local.conf"))
    result = executor.run(["bash", "-c", 'cd "$1" && ./stack.sh >/dev/null', "x",
                           str(paths.devstack_dir)], timeout=60)
    assert result.ok, result.stderr
    return paths


def make_job(node: DevstackNodePaths, **tempest: Any) -> DevstackHypervJob:
    return DevstackHypervJob.model_validate({
        "type": "devstack-hyperv", "image": "/opt/stack/images/cirros.vhdx",
        "devstack_dir": str(node.devstack_dir),
        "tempest_dir": str(node.tempest_dir), "workspace": str(node.root / "workspace"),
        "tempest": {"include_regex": r"^tempest\.api\.network\.", "concurrency": 2,
                    "serial": [], **tempest}})


def run_step(job: DevstackHypervJob, executor: SSHExecutor,
             sessions: sessionmaker[Session], log_dir: Path,
             progress_seconds: float = 0.2) -> tuple[JobResult, str]:
    """TempestStep as the runner drives it: the rendered tempest.sh uploaded and run."""
    workspace = Path(job.workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "tempest-exclude.txt").write_text(tempest_exclude_file(job), encoding="utf-8")
    (workspace / "tempest-exclude-parallel.txt").write_text(
        tempest_parallel_exclude_file(job), encoding="utf-8")
    script = make_environment().get_template("tempest.sh.j2").render(
        job=job, workspace=job.workspace, dest=str(Path(job.devstack_dir).parent),
        tempest_serial_regex=tempest_serial_regex(job))
    with sessions() as session, session.begin():
        change = Change(number=1, project="openstack/compute-hyperv", branch="master")
        build = Build(patchset=Patchset(change=change, number=1, ref="refs/changes/01/1/1",
                                        revision="a" * 40), job="hyperv")
        session.add(build)
        session.flush()
        build_id = build.id
    recorder = StepRecorder(sessions, build_id, log_dir)

    def run_script(step: StepHandle, args: Sequence[str]) -> CommandResult:
        executor.put(script.encode(), str(workspace / "tempest.sh"), 0o755)
        step.log("--- " + shlex.join(["tempest.sh", *args]))
        return executor.run(["bash", str(workspace / "tempest.sh"), *args], timeout=120,
                            on_output=step.write)

    with recorder.step("tempest", "devstack-1") as step:
        result = TempestStep(job.tempest, executor, lambda args: run_script(step, args),
                             str(workspace / "tempest" / "tempest.subunit"), log_dir,
                             progress_seconds).run(step)
    log = next(log_dir.glob("*-tempest-*.log")).read_text(encoding="utf-8")
    return result, log


def statuses(result: JobResult) -> dict[str, str]:
    return {t.test_id.split("[")[0].rsplit(".", 1)[1]: t.status for t in result.tests}


def test_a_pass_on_re_run_is_flaky_and_the_build_succeeds(
        node: DevstackNodePaths, executor: SSHExecutor, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    (node.lab_dir / "faults" / "tempest-flaky").write_text(FLAKY + "\n", encoding="utf-8")
    result, log = run_step(make_job(node), executor, sqlite_sessions, tmp_path / "logs")

    assert result.outcome == Outcome.SUCCEEDED, result.summary
    assert statuses(result)[FLAKY] == "flaky"
    assert {s for n, s in statuses(result).items() if n != FLAKY} == {"success"}
    assert f"flaky (passed when re-run): NetworksTest.{FLAKY}" in result.summary
    assert "re-running 1 failed tests (re-run 1 of 1)" in log
    assert "tempest.sh rerun 1" in log and "FLAKY: " in log
    # Each stream is in the log tree; the re-run loaded only the failed test.
    assert (tmp_path / "logs" / "tempest.subunit").exists()
    rerun = parse_subunit((tmp_path / "logs" / "tempest-rerun-1.subunit").read_bytes())
    assert [(t.test_id, t.status) for t in rerun] == [
        (t.test_id, "success") for t in result.tests if t.status == "flaky"]
    load_list = (node.root / "workspace" / "tempest" / "rerun-1.txt").read_text(encoding="utf-8")
    assert load_list.splitlines() == [t.test_id for t in result.tests if t.status == "flaky"]


def test_a_failure_on_re_run_too_fails_the_build(
        node: DevstackNodePaths, executor: SSHExecutor, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    (node.lab_dir / "faults" / "tempest-fail").write_text(FLAKY + "\n", encoding="utf-8")
    result, log = run_step(make_job(node, rerun_failed=2), executor, sqlite_sessions,
                           tmp_path / "logs")

    assert result.outcome == Outcome.FAILED, result.summary
    assert statuses(result)[FLAKY] == "fail"
    assert f"failed: NetworksTest.{FLAKY}" in result.summary and "flaky" not in result.summary
    failed = next(t for t in result.tests if t.status == "fail")
    assert "re-run 1: fail" in failed.details and "re-run 2: fail" in failed.details
    assert failed.attempt == 2  # decided by the last re-run
    assert "re-run 2 of 2" in log


def test_without_re_runs_a_flaky_test_fails_the_build(
        node: DevstackNodePaths, executor: SSHExecutor, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    (node.lab_dir / "faults" / "tempest-flaky").write_text(FLAKY + "\n", encoding="utf-8")
    result, log = run_step(make_job(node, rerun_failed=0), executor, sqlite_sessions,
                           tmp_path / "logs")

    assert result.outcome == Outcome.FAILED, result.summary
    assert statuses(result)[FLAKY] == "fail"
    assert "re-running" not in log


def test_no_tempest_where_devstack_puts_it_is_a_ci_error(
        node: DevstackNodePaths, executor: SSHExecutor, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    # The job's tempest_dir is not devstack's, and there is no global venv tempest
    # (as on a stable branch, where INSTALL_TEMPEST is False).
    elsewhere = node.root / "other-tempest"
    elsewhere.mkdir()
    shutil.rmtree(node.root / "data")
    job = make_job(node).model_copy(update={"tempest_dir": str(elsewhere)})
    with pytest.raises(InfraError, match="tempest is not installed where devstack puts it"):
        run_step(job, executor, sqlite_sessions, tmp_path / "logs")


def test_a_run_of_no_test_is_a_ci_error(
        node: DevstackNodePaths, executor: SSHExecutor, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    result, _ = run_step(make_job(node, include_regex=r"^tempest\.nothing\."), executor,
                         sqlite_sessions, tmp_path / "logs")
    assert result.outcome == Outcome.ERROR and "ran no tests" in result.summary


def test_step_state_follows_the_verdict(
        node: DevstackNodePaths, executor: SSHExecutor, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    (node.lab_dir / "faults" / "tempest-flaky").write_text(FLAKY + "\n", encoding="utf-8")
    run_step(make_job(node), executor, sqlite_sessions, tmp_path / "logs")
    with sqlite_sessions() as session:
        (row,) = session.query(BuildStep).all()
        assert row.state == StepState.SUCCEEDED


def test_the_step_exit_code_is_the_verdict_not_tempest_sh_s(
        node: DevstackNodePaths, executor: SSHExecutor, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    # tempest.sh exits 0 when tests fail (`tempest run --subunit` does): the step
    # said "failed" with exit 0. Its exit code is now the verdict's.
    (node.lab_dir / "faults" / "tempest-fail").write_text(FLAKY + "\n", encoding="utf-8")
    result, log = run_step(make_job(node), executor, sqlite_sessions, tmp_path / "logs")
    assert result.outcome == Outcome.FAILED
    assert "tempest.sh exited 0" in log
    with sqlite_sessions() as session:
        (row,) = session.query(BuildStep).all()
        assert (row.state, row.exit_code) == (StepState.FAILED, 1)
        # The live counts end on the streams' verdict (re-run included).
        assert (row.tests_done, row.tests_failed, row.current_test) == (
            len(result.tests), 1, None)
        assert row.tests_passed == len(result.tests) - 1


def test_live_progress_moves_while_a_slow_run_goes_on(
        node: DevstackNodePaths, executor: SSHExecutor, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    (node.lab_dir / "faults" / "tempest-slow").write_text("0.25\n", encoding="utf-8")
    (node.lab_dir / "faults" / "tempest-flaky").write_text(FLAKY + "\n", encoding="utf-8")
    seen: list[tuple[int | None, int | None, str | None]] = []
    done = threading.Event()

    def watch() -> None:
        # What the dashboard would read, while the step runs.
        while not done.wait(0.05):
            with sqlite_sessions() as session:
                row = session.query(BuildStep).one_or_none()
                if row is not None and row.state == StepState.RUNNING:
                    seen.append((row.tests_done, row.tests_failed, row.current_test))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result, _ = run_step(make_job(node, include_regex=r"^tempest\.", concurrency=2),
                             executor, sqlite_sessions, tmp_path / "logs")
    finally:
        done.set()
        watcher.join()
    counts = sorted({d for d, _, _ in seen if d})
    assert len(counts) >= 3, seen  # it moved at least twice before the step ended
    assert counts[-1] <= len(result.tests)
    assert any(current and current.startswith("tempest.") for _, _, current in seen)
    # The flaky test counted failed while it was, then passed once re-run.
    assert any(failed == 1 for _, failed, _ in seen), seen
    with sqlite_sessions() as session:
        (row,) = session.query(BuildStep).all()
        assert (row.state, row.exit_code, row.tests_failed) == (StepState.SUCCEEDED, 0, 0)
        assert row.tests_done == len(result.tests) == 15


def test_an_earlier_builds_streams_are_not_counted_as_this_ones(
        node: DevstackNodePaths, executor: SSHExecutor, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    # The workspace still holds a finished run's stream: 40 failures. The watcher
    # reads as soon as it starts, before tempest.sh empties the directory.
    import io

    import subunit

    out = io.BytesIO()
    writer = subunit.StreamResultToBytes(out)
    for i in range(40):
        writer.status(test_id=f"tempest.stale.test_{i}", test_status="fail")
    stale = node.root / "workspace" / "tempest"
    stale.mkdir(parents=True)
    (stale / "parallel.subunit").write_bytes(out.getvalue())
    seen: list[int | None] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            with sqlite_sessions() as session:
                row = session.query(BuildStep).one_or_none()
                if row is not None:
                    seen.append(row.tests_failed)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result, _ = run_step(make_job(node), executor, sqlite_sessions, tmp_path / "logs")
    finally:
        done.set()
        watcher.join()
    assert result.outcome == Outcome.SUCCEEDED
    assert set(seen) <= {None, 0}, seen
