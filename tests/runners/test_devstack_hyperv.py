"""The devstack-hyperv job end to end against the simulated lab and the simulated Gerrit's git."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci.changes import ChangeInfo
from ci.config import Config, DevstackHypervJob, parse_config
from ci.models import Build, BuildStep, Change, Patchset, StepState
from runners.base import BuildContext, JobResult, Outcome
from runners.devstack_hyperv import DevstackHypervRunner, extract_zip
from runners.powershell import syntax_errors
from runners.steps import StepRecorder, make_redactor
from sim.gerrit_state import GerritState
from sim.lab import ADMIN_PASSWORD_ENV, SERVICE_PASSWORD_ENV, WINRM_PASSWORD_ENV, SimLab

PROJECT = "openstack/nova"
# nova's in-tree Hyper-V driver (what a nova change runs) and networking-hyperv's
# devstack plugin both live on 2023.1; master has neither.
BRANCH = "unmaintained/2023.1"
SUBJECT = "Fix the Hyper-V driver for 实例 names with quotes ' \" and $(rm -rf /)"
OWNER = "Zoë Åström"


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimLab]:
    monkeypatch.setenv(WINRM_PASSWORD_ENV, "winrm-Secret-123")
    monkeypatch.setenv(ADMIN_PASSWORD_ENV, "admin-Secret-456")
    monkeypatch.setenv(SERVICE_PASSWORD_ENV, "service-Secret-789")
    # OpenSSH's own sshd (make test installs it): never the paramiko stand-in here.
    with SimLab(tmp_path / "lab", hyperv_nodes=2, use_sshd=True) as started:
        yield started


@pytest.fixture
def gerrit(tmp_path: Path) -> GerritState:
    return GerritState(tmp_path / "gerrit")


def make_config(lab: SimLab, gerrit: GerritState, **job: Any) -> Config:
    data: dict[str, Any] = {
        "gerrit": {"host": "127.0.0.1", "username": "ci", "key_file": "/nonexistent/key",
                   "known_hosts": "/nonexistent/known_hosts",
                   "git_url": gerrit.root.resolve().as_uri() + "/git/{project}.git"},
        "projects": [{"name": PROJECT, "jobs": ["hyperv"]}],
        "jobs": {"hyperv": {
            "type": "devstack-hyperv", **lab.job_overrides(),
            "stack_timeout": 60, "services_timeout": 5, "command_timeout": 30,
            "tempest": {"concurrency": 2, "timeout": 120}, **job}},
        "nodes": lab.node_configs(),
    }
    if lab.parent is not None:
        data["parent_hosts"] = lab.parent_host_configs()
    return parse_config(data)


def push(gerrit: GerritState, files: dict[str, str], subject: str = SUBJECT) -> ChangeInfo:
    pushed = gerrit.push(PROJECT, BRANCH, files=files, subject=subject, owner=OWNER)
    return ChangeInfo(project=PROJECT, branch=BRANCH, number=int(pushed["change"]),
                     patchset=int(pushed["patchset"]), ref=str(pushed["ref"]),
                     revision=str(pushed["revision"]), subject=subject, owner_name=OWNER)


@dataclass
class BuildRun:
    result: JobResult
    failed_nodes: list[str]
    ctx: BuildContext
    runner: DevstackHypervRunner


def run_build(config: Config, change: ChangeInfo, sessions: sessionmaker[Session],
              tmp_path: Path, should_abort: Callable[[], bool] = lambda: False) -> BuildRun:
    """Drive the runner the way the worker does: prepare, run, then collect and cleanup always."""
    with sessions() as session, session.begin():
        row = Change(number=change.number, project=change.project, branch=change.branch,
                     subject=change.subject, owner_name=change.owner)
        patchset = Patchset(change=row, number=change.patchset, ref=change.ref,
                            revision=change.revision)
        build = Build(patchset=patchset, job="hyperv")
        session.add_all([row, patchset, build])
        session.flush()
        build_id = build.id
    log_dir = tmp_path / "logs" / str(build_id)
    ctx = BuildContext(
        build_id=build_id, job_name="hyperv", change=change, config=config, log_dir=log_dir,
        log_url="http://logs.example/", nodes=list(config.nodes), should_abort=should_abort,
        steps=StepRecorder(sessions, build_id, log_dir, make_redactor(config.secrets())),
    )
    job = config.jobs["hyperv"]
    assert isinstance(job, DevstackHypervJob)
    runner = DevstackHypervRunner(job, cache_dir=tmp_path / "git-cache", winrm_backoff=0.1)
    prepared = None
    try:
        prepared = runner.prepare(ctx)
        result = runner.run(ctx, prepared)
    finally:
        if prepared is not None:
            runner.collect(ctx, prepared)
        failed = runner.cleanup(ctx, prepared)
    return BuildRun(result, failed, ctx, runner)


def steps_of(sessions: sessionmaker[Session], build_id: int) -> list[BuildStep]:
    with sessions() as session:
        rows = list(session.scalars(select(BuildStep).where(BuildStep.build_id == build_id)
                                    .order_by(BuildStep.id)))
        for row in rows:
            session.expunge(row)
        return rows


def step(rows: list[BuildStep], name: str, node: str | None = None) -> BuildStep:
    found = [r for r in rows if r.name == name and (node is None or r.node == node)]
    assert len(found) == 1, [(r.name, r.node, r.state) for r in rows]
    return found[0]


def step_log(out: BuildRun, row: BuildStep) -> str:
    assert row.log_name
    return (out.ctx.log_dir / row.log_name).read_text(encoding="utf-8")


def assert_cleaned_everywhere(rows: list[BuildStep]) -> None:
    cleaned = {r.node for r in rows if r.name == "cleanup"}
    assert cleaned == {"devstack-1", "hv-1", "hv-2"}


def assert_scripts_parsed(lab: SimLab) -> None:
    for server in lab.winrm.values():
        assert server.scripts, f"{server.node_name} received no script"
        for node, name, text in server.scripts:
            assert syntax_errors(text) == [], (node, name)


def test_whole_job_succeeds(lab: SimLab, gerrit: GerritState, tmp_path: Path,
                            sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit)
    change = push(gerrit, {"nova/virt/hyperv/驱动 é.py": "print('你好')\n"})

    out = run_build(config, change, sqlite_sessions, tmp_path)

    assert out.result.outcome == Outcome.SUCCEEDED, out.result.summary
    assert out.failed_nodes == []
    statuses = {t.status for t in out.result.tests}
    assert "success" in statuses
    assert all(t.test_id.startswith("tempest.") for t in out.result.tests)
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    names = {r.name for r in rows}
    assert names == {"prepare-change", "windows-teardown", "windows-bootstrap", "devstack",
                     "hyperv-compute", "wait-services", "tempest", "collect-logs", "cleanup"}
    assert all(r.state == StepState.SUCCEEDED for r in rows), [(r.name, r.node, r.state)
                                                               for r in rows]
    assert {r.node for r in rows if r.name == "windows-bootstrap"} == {"hv-1", "hv-2"}
    assert_cleaned_everywhere(rows)
    assert_scripts_parsed(lab)
    # Logs from both operating systems, and what was sent.
    controller_files = list((out.ctx.log_dir / "controller").rglob("*"))
    assert any(p.name == "stack.sh.log" for p in controller_files)
    for node in ("hv-1", "hv-2"):
        logs = list((out.ctx.log_dir / node).rglob("nova-compute.log"))
        assert logs and "实例 Zoë" in logs[0].read_text(encoding="utf-8")
    assert (out.ctx.log_dir / "rendered" / "hv-2-nova.conf").is_file()
    # The merged change (not the bare patchset) was checked out on the controller.
    prepared = out.runner.merged
    assert prepared is not None and prepared.merge_commit != change.revision
    assert f"at {prepared.merge_commit}" in step_log(out, step(rows, "devstack"))
    install = [t for _n, name, t in lab.winrm["hv-1"].scripts if name == "install"]
    assert install and prepared.merge_commit in install[0]
    # Step logs are redacted as they are written.
    for row in rows:
        assert "admin-Secret-456" not in step_log(out, row)


def test_merge_conflict_is_reported_without_touching_nodes(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit)
    first = push(gerrit, {"nova/driver.py": "value = 'first'\n"}, "First")
    second = push(gerrit, {"nova/driver.py": "value = 'second'\n"}, "Second 第二")
    gerrit.merge(first.number)

    out = run_build(config, second, sqlite_sessions, tmp_path)

    assert out.result.outcome == Outcome.MERGE_CONFLICT
    assert "nova/driver.py" in out.result.summary
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    assert step(rows, "prepare-change").state == StepState.FAILED
    assert step(rows, "tempest").state == StepState.SKIPPED
    assert_cleaned_everywhere(rows)
    assert out.failed_nodes == []
    assert not [s for s in lab.winrm["hv-1"].scripts if s[1] in ("teardown", "install")]


def test_windows_bootstrap_failure_is_an_error(lab: SimLab, gerrit: GerritState,
                                               tmp_path: Path,
                                               sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit)
    lab.winrm["hv-2"].faults.set("bootstrap", exit_code=1,
                                 stderr="Install-WindowsFeature : Hyper-V 安装失败")
    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path)

    assert out.result.outcome == Outcome.ERROR
    assert "bootstrap.ps1 failed on hv-2" in out.result.summary
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    bootstrap = step(rows, "windows-bootstrap", "hv-2")
    assert bootstrap.state == StepState.ERROR
    assert "Hyper-V 安装失败" in step_log(out, bootstrap)
    assert step(rows, "windows-bootstrap", "hv-1").state == StepState.SUCCEEDED
    assert step(rows, "tempest").state == StepState.SKIPPED
    assert_cleaned_everywhere(rows)
    assert out.failed_nodes == []
    assert_scripts_parsed(lab)


def test_stack_failure_is_an_error(lab: SimLab, gerrit: GerritState, tmp_path: Path,
                                   sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit)
    (lab.faults_dir / "stack").write_text("mysql did not start: 数据库错误\n", encoding="utf-8")
    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path)

    assert out.result.outcome == Outcome.ERROR
    assert "stack.sh failed" in out.result.summary
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    devstack = step(rows, "devstack")
    assert devstack.state == StepState.ERROR
    assert "数据库错误" in step_log(out, devstack)
    assert step(rows, "hyperv-compute").state == StepState.SKIPPED
    assert_cleaned_everywhere(rows)
    assert out.failed_nodes == []


def test_stack_sh_past_its_time_cap_is_an_error(lab: SimLab, gerrit: GerritState,
                                                tmp_path: Path,
                                                sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit, stack_timeout=3)
    (lab.faults_dir / "stack-hang").write_text("\n", encoding="utf-8")
    started = time.monotonic()
    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path)

    assert out.result.outcome == Outcome.ERROR, out.result.summary
    assert "timed out" in out.result.summary
    assert time.monotonic() - started < 60  # capped, not the sim's hour-long hang
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    assert step(rows, "devstack").state == StepState.ERROR
    assert step(rows, "tempest").state == StepState.SKIPPED
    assert_cleaned_everywhere(rows)


def test_configure_services_failure_is_an_error(lab: SimLab, gerrit: GerritState,
                                                tmp_path: Path,
                                                sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit)
    lab.winrm["hv-1"].faults.set("configure-services", exit_code=1,
                                 stderr="New-Service : 服务已存在 nova-compute")
    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path)

    assert out.result.outcome == Outcome.ERROR
    assert "configure-services.ps1 failed on hv-1" in out.result.summary
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    compute = step(rows, "hyperv-compute", "hv-1")
    assert compute.state == StepState.ERROR
    text = step_log(out, compute)
    assert "服务已存在 nova-compute" in text and "start-services.ps1" not in text
    assert step(rows, "tempest").state == StepState.SKIPPED
    assert_cleaned_everywhere(rows)
    assert out.failed_nodes == []


def test_service_not_starting_is_an_error_with_its_stderr(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit)
    lab.winrm["hv-1"].faults.set(
        "start-services", exit_code=1,
        stderr="Start-Service : Service 'nova-compute' cannot be started")
    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path)

    assert out.result.outcome == Outcome.ERROR
    assert "did not start on hv-1" in out.result.summary
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    compute = step(rows, "hyperv-compute", "hv-1")
    assert compute.state == StepState.ERROR
    text = step_log(out, compute)
    assert "cannot be started" in text
    assert "service-stderr.ps1 on hv-1" in text
    assert "计算节点启动 (Zoë)" in text  # what the service printed when run by hand
    assert step(rows, "wait-services").state == StepState.SKIPPED
    assert_cleaned_everywhere(rows)
    assert_scripts_parsed(lab)


def test_services_never_up_is_an_error_with_their_stderr(
        lab: SimLab, gerrit: GerritState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit, services_timeout=1)
    # start-services.ps1 reports success, but the services never run (they die at once).
    monkeypatch.setattr(lab.winrm["hv-2"].model, "_start_services", lambda script, out: 0)
    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path)

    assert out.result.outcome == Outcome.ERROR
    assert "not up within 1s" in out.result.summary
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    wait = step(rows, "wait-services")
    assert wait.state == StepState.ERROR
    text = step_log(out, wait)
    assert "hv-2: nova-compute is not up" in text
    assert "service-stderr.ps1 on hv-2" in text and "计算节点启动 (Zoë)" in text
    assert step(rows, "tempest").state == StepState.SKIPPED
    assert_cleaned_everywhere(rows)
    assert out.failed_nodes == []


def test_tempest_failures_fail_the_build_with_per_test_results(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit)
    (lab.faults_dir / "tempest-fail").write_text("test_list_servers\n", encoding="utf-8")
    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path)

    assert out.result.outcome == Outcome.FAILED, out.result.summary
    failed = [t for t in out.result.tests if t.status == "fail"]
    assert failed and all("test_list_servers" in t.test_id for t in failed)
    assert all(t.details for t in failed)  # each failure carries its traceback
    assert any(t.status == "success" for t in out.result.tests)
    # The summary (the vote's detail) names Class.test, not a bare method.
    assert "failed: ServersTestJSON.test_list_servers" in out.result.summary
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    tempest = step(rows, "tempest")
    assert tempest.state == StepState.FAILED
    # The step's own log says why: each failure with its traceback.
    assert tempest.output_tail is not None
    assert f"FAIL: {failed[0].test_id}" in tempest.output_tail
    assert "BuildErrorException" in tempest.output_tail and "could not be scheduled" in (
        tempest.output_tail)
    assert_cleaned_everywhere(rows)
    assert out.failed_nodes == []


def test_tempest_selection_include_exclude_and_concurrency(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    # Only network tests: the serial pass (resize, shelve, snapshot) selects nothing.
    config = make_config(lab, gerrit, tempest={
        "include_regex": r"^tempest\.api\.network\.", "exclude": [r"test_list_networks"],
        "concurrency": 3, "timeout": 120})
    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path)

    assert out.result.outcome == Outcome.SUCCEEDED, out.result.summary
    ids = [t.test_id for t in out.result.tests]
    assert ids and all(i.startswith("tempest.api.network.") for i in ids), ids
    assert not any("test_list_networks" in i for i in ids)
    log = step_log(out, step(steps_of(sqlite_sessions, out.ctx.build_id), "tempest"))
    assert "parallel pass exited 0" in log and "serial pass exited 0" not in log
    assert "CONCURRENCY=3" in (out.ctx.log_dir / "rendered" / "devstack-1-tempest.sh").read_text(
        encoding="utf-8")


def test_tempest_selecting_no_test_is_an_error(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit, tempest={"include_regex": r"^tempest\.nothing\.",
                                               "serial": [], "timeout": 120})
    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path)

    assert out.result.outcome == Outcome.ERROR  # the CI's configuration, not the change
    assert "ran no tests" in out.result.summary
    assert step(steps_of(sqlite_sessions, out.ctx.build_id), "tempest").state == StepState.ERROR


def test_hanging_windows_command_times_out_as_an_error(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit, command_timeout=2)
    lab.winrm["hv-1"].faults.set("teardown", hang=True, times=1)
    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path)

    assert out.result.outcome == Outcome.ERROR
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    teardown = step(rows, "windows-teardown", "hv-1")
    assert teardown.state == StepState.ERROR
    assert [s for s, _code in lab.winrm["hv-1"].signals] == ["teardown"]
    assert_cleaned_everywhere(rows)
    assert out.failed_nodes == []  # the node itself is fine: it only ran a slow command


def test_node_killed_mid_build(lab: SimLab, gerrit: GerritState, tmp_path: Path,
                               sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit)
    victim = lab.winrm["hv-2"]
    victim.faults.set("install", hang=True)

    def kill_when_installing() -> None:
        while not any(name == "install" for _n, name, _t in victim.scripts):
            threading.Event().wait(0.05)
        victim.kill()

    killer = threading.Thread(target=kill_when_installing, daemon=True)
    killer.start()
    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path)
    killer.join(timeout=30)

    assert out.result.outcome == Outcome.ERROR
    assert out.failed_nodes == ["hv-2"]
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    assert step(rows, "hyperv-compute", "hv-2").state == StepState.ERROR
    assert step(rows, "hyperv-compute", "hv-1").state == StepState.SUCCEEDED
    assert step(rows, "cleanup", "hv-1").state == StepState.SUCCEEDED
    assert step(rows, "cleanup", "devstack-1").state == StepState.SUCCEEDED
    assert step(rows, "cleanup", "hv-2").state == StepState.ERROR
    assert step(rows, "collect-logs", "hv-2").state == StepState.SKIPPED


def test_abort_stops_between_steps_and_still_cleans(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit)
    aborted = threading.Event()
    change = push(gerrit, {"a.py": "a\n"})

    def should_abort() -> bool:
        # Abort as soon as the change is prepared (the first step has finished).
        return aborted.is_set() or bool(list((tmp_path / "git-cache").glob("*.git")))

    out = run_build(config, change, sqlite_sessions, tmp_path, should_abort)

    assert out.result.outcome == Outcome.ERROR
    assert "aborted" in out.result.summary
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    assert step(rows, "prepare-change").state == StepState.SUCCEEDED
    assert step(rows, "devstack").state == StepState.SKIPPED
    assert_cleaned_everywhere(rows)


def stack_processes(lab: SimLab) -> list[int]:
    """Pids of this lab's running `stack.sh` (the sim's stack module, not unstack)."""
    wanted = ["sim.devstack_node.stack", "stack", str(lab.devstack.root)]
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if state not in ("Z", "X") and all(part in argv for part in wanted):
            pids.append(int(proc.name))
    return pids


def test_abort_stops_a_running_stack_sh_and_still_cleans(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    # stack.sh hangs (the sim's hour-long sleep) under a long cap: only the abort
    # can end the step before the cap.
    config = make_config(lab, gerrit, stack_timeout=240)
    (lab.faults_dir / "stack-hang").write_text("\n", encoding="utf-8")
    aborted = threading.Event()
    abort_seen: list[float] = []

    def should_abort() -> bool:
        # A new patchset arrives while stack.sh is running on the controller.
        if not aborted.is_set() and stack_processes(lab):
            abort_seen.append(time.monotonic())
            aborted.set()
        return aborted.is_set()

    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path,
                    should_abort)
    finished = time.monotonic()

    assert out.result.outcome == Outcome.ERROR, out.result.summary
    assert "aborted" in out.result.summary
    assert abort_seen and finished - abort_seen[0] < 90  # not the 240 s stack_timeout
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    devstack = step(rows, "devstack")
    assert devstack.state == StepState.ERROR
    assert "wait_for_service" in step_log(out, devstack)  # it was stopped mid-step
    assert step(rows, "hyperv-compute").state == StepState.SKIPPED
    assert step(rows, "tempest").state == StepState.SKIPPED
    assert_cleaned_everywhere(rows)
    assert all(r.state == StepState.SUCCEEDED for r in rows if r.name == "cleanup"), [
        (r.node, r.state, r.message) for r in rows if r.name == "cleanup"]
    assert out.failed_nodes == []
    # The remote stack.sh is gone (killed with its process group), not left running.
    deadline = time.monotonic() + 30
    while stack_processes(lab) and time.monotonic() < deadline:
        threading.Event().wait(0.1)
    assert stack_processes(lab) == []


def test_abort_stops_a_hanging_windows_script(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit, command_timeout=240)
    victim = lab.winrm["hv-2"]
    victim.faults.set("install", hang=True, times=1)

    def should_abort() -> bool:
        return any(name == "install" for _n, name, _t in victim.scripts)

    started = time.monotonic()
    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path,
                    should_abort)

    assert out.result.outcome == Outcome.ERROR, out.result.summary
    assert "aborted" in out.result.summary
    assert time.monotonic() - started < 150  # not the 240 s command_timeout
    assert ("install", "terminate") in victim.signals
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    assert step(rows, "hyperv-compute", "hv-2").state == StepState.ERROR
    assert step(rows, "wait-services").state == StepState.SKIPPED
    assert_cleaned_everywhere(rows)
    assert out.failed_nodes == []
    # An abort is not a dead node: its logs are still collected.
    assert step(rows, "collect-logs", "hv-2").state == StepState.SUCCEEDED


def test_abort_during_the_service_diagnostics_is_still_an_abort(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit, command_timeout=240)
    victim = lab.winrm["hv-1"]
    victim.faults.set("start-services", exit_code=1, stderr="nova-compute cannot be started")
    victim.faults.set("service-stderr", hang=True)

    def should_abort() -> bool:
        return any(name == "service-stderr" for _n, name, _t in victim.scripts)

    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path,
                    should_abort)

    # Not "services did not start": the diagnostic was cut short by the abort.
    assert out.result.outcome == Outcome.ERROR
    assert "aborted" in out.result.summary, out.result.summary
    assert ("service-stderr", "terminate") in victim.signals
    assert_cleaned_everywhere(steps_of(sqlite_sessions, out.ctx.build_id))


def test_extract_zip_refuses_paths_leaving_the_target(tmp_path: Path) -> None:
    import zipfile

    archive = tmp_path / "logs.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("eventlog/System.html", "<html>实例</html>")
        zipped.writestr("../escape.txt", "no")
        zipped.writestr("/abs.txt", "no")
    count = extract_zip(archive, tmp_path / "out")
    assert count == 1
    assert (tmp_path / "out" / "eventlog" / "System.html").read_text() == "<html>实例</html>"
    assert not (tmp_path / "escape.txt").exists()
    assert not Path("/abs.txt").exists()


def test_registry_builds_this_runner(lab: SimLab, gerrit: GerritState) -> None:
    from runners.registry import make_runner, node_labels_for

    config = make_config(lab, gerrit)
    runner = make_runner(config, "hyperv")
    assert isinstance(runner, DevstackHypervRunner)
    assert runner.node_labels() == node_labels_for(config, "hyperv") == [
        "devstack", "hyperv", "hyperv"]


def test_windows_teardown_failure_is_an_error_and_still_cleans_everywhere(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit)
    lab.winrm["hv-1"].faults.set("teardown", exit_code=1,
                                 stderr="Remove-VM : 实例 'Zoë' est verrouillé")
    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path)

    assert out.result.outcome == Outcome.ERROR
    assert "teardown.ps1 failed on hv-1" in out.result.summary
    assert "实例 'Zoë' est verrouillé" in out.result.summary
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    teardown = step(rows, "windows-teardown", "hv-1")
    assert teardown.state == StepState.ERROR
    assert "实例 'Zoë' est verrouillé" in step_log(out, teardown)
    # hv-1 stops at its teardown; hv-2 and the controller finish their half of the stage.
    assert not [r for r in rows if r.name == "windows-bootstrap" and r.node == "hv-1"]
    assert step(rows, "windows-bootstrap", "hv-2").state == StepState.SUCCEEDED
    assert step(rows, "devstack").state == StepState.SUCCEEDED
    assert step(rows, "hyperv-compute").state == StepState.SKIPPED
    assert step(rows, "tempest").state == StepState.SKIPPED
    assert_cleaned_everywhere(rows)
    assert all(r.state == StepState.SUCCEEDED for r in rows if r.name == "cleanup")
    assert out.failed_nodes == []
    assert [name for _n, name, _t in lab.winrm["hv-1"].scripts].count("cleanup") == 1
    assert_scripts_parsed(lab)


def test_install_failure_is_an_error(lab: SimLab, gerrit: GerritState, tmp_path: Path,
                                     sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit)
    lab.winrm["hv-2"].faults.set("install", exit_code=1,
                                 stderr="pip : ERROR: 依赖冲突 os-win (Zoë)")
    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path)

    assert out.result.outcome == Outcome.ERROR
    assert "install.ps1 failed on hv-2" in out.result.summary
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    compute = step(rows, "hyperv-compute", "hv-2")
    assert compute.state == StepState.ERROR
    text = step_log(out, compute)
    assert "install.ps1 on hv-2" in text and "依赖冲突 os-win (Zoë)" in text
    assert "configure-services.ps1" not in text  # nothing runs after a failed install
    assert step(rows, "hyperv-compute", "hv-1").state == StepState.SUCCEEDED
    assert step(rows, "wait-services").state == StepState.SKIPPED
    assert step(rows, "tempest").state == StepState.SKIPPED
    # The node answered (it only failed a script): its logs are still collected.
    assert step(rows, "collect-logs", "hv-2").state == StepState.SUCCEEDED
    assert_cleaned_everywhere(rows)
    assert out.failed_nodes == []


def test_windows_log_collection_failure_leaves_the_verdict_alone(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit)
    lab.winrm["hv-1"].faults.set("collect-logs", exit_code=5,
                                 stderr="Compress-Archive : 访问被拒绝 C:\\OpenStack\\logs")
    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path)

    assert out.result.outcome == Outcome.SUCCEEDED, out.result.summary
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    assert step(rows, "tempest").state == StepState.SUCCEEDED
    collect = step(rows, "collect-logs", "hv-1")
    assert collect.state == StepState.ERROR
    assert collect.exit_code == 5
    text = step_log(out, collect)
    assert "collect-logs.ps1 failed on hv-1 (exit 5)" in text
    assert "访问被拒绝" in text
    assert step(rows, "collect-logs", "hv-2").state == StepState.SUCCEEDED
    assert step(rows, "collect-logs", "devstack-1").state == StepState.SUCCEEDED
    assert not (out.ctx.log_dir / "hv-1").exists()
    assert list((out.ctx.log_dir / "hv-2").rglob("nova-compute.log"))
    assert_cleaned_everywhere(rows)
    assert out.failed_nodes == []


def test_cleanup_failure_on_one_windows_node_is_reported(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit)
    lab.winrm["hv-2"].faults.set("cleanup", exit_code=1,
                                 stderr="Remove-VM : la VM « 实例 » est introuvable")
    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path)

    assert out.result.outcome == Outcome.SUCCEEDED, out.result.summary
    assert out.failed_nodes == ["hv-2"]
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    cleanup = step(rows, "cleanup", "hv-2")
    assert cleanup.state == StepState.ERROR
    assert "la VM « 实例 » est introuvable" in step_log(out, cleanup)
    assert step(rows, "cleanup", "hv-1").state == StepState.SUCCEEDED
    assert step(rows, "cleanup", "devstack-1").state == StepState.SUCCEEDED


def test_non_ascii_windows_output_reaches_the_step_log_decoded(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit)
    text = "Get-VM : 实例 Zoë « naïve » — Ωmega ✓"
    lab.winrm["hv-1"].faults.set("bootstrap", stdout=text)
    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path)

    assert out.result.outcome == Outcome.SUCCEEDED, out.result.summary
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    bootstrap = step(rows, "windows-bootstrap", "hv-1")
    log = step_log(out, bootstrap)
    assert text in log
    assert "subject: " + SUBJECT in log  # bootstrap's own non-ASCII output too
    assert "\ufffd" not in log and "?????" not in log
    # The live tail the dashboard shows is the same text.
    assert bootstrap.output_tail is not None and text in bootstrap.output_tail


def edit_local_conf(monkeypatch: pytest.MonkeyPatch, edit: Callable[[str], str]) -> None:
    """Make the runner send an edited local.conf (what an older render produced)."""
    import dataclasses

    import runners.devstack_hyperv as module
    from runners.render import RenderedJob, render_job

    def render(*args: Any, **kwargs: Any) -> RenderedJob:
        rendered = render_job(*args, **kwargs)
        files = [dataclasses.replace(f, text=edit(f.text)) if f.step == "local.conf" else f
                 for f in rendered.files.values()]
        return RenderedJob(files, rendered._paths)

    monkeypatch.setattr(module, "render_job", render)


@pytest.mark.parametrize(("edit", "message"), [
    # The old render: no enable_plugin (its extras.d hook is skipped by devstack).
    (lambda text: "\n".join(line for line in text.splitlines()
                            if not line.startswith("enable_plugin")),
     "Neutron did not start"),
    (lambda text: text.replace("DOWNLOAD_DEFAULT_IMAGES=False\n", ""),
     "Invalid image format 'qcow2'"),
    (lambda text: text.replace("openvswitch,hyperv", "openvswitch,hyperv,cisco_nexus"),
     "Neutron did not start"),
])
def test_a_local_conf_devstack_refuses_is_a_ci_error(
        lab: SimLab, gerrit: GerritState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        sqlite_sessions: sessionmaker[Session], edit: Callable[[str], str],
        message: str) -> None:
    edit_local_conf(monkeypatch, edit)
    config = make_config(lab, gerrit)
    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path)

    assert out.result.outcome == Outcome.ERROR, out.result.summary  # never a -1
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    devstack = step(rows, "devstack")
    assert devstack.state == StepState.ERROR
    assert message in step_log(out, devstack)
    assert step(rows, "tempest").state == StepState.SKIPPED
    assert_cleaned_everywhere(rows)


def test_a_provisioned_lab_is_turned_off_not_cleaned(
        gerrit: GerritState, tmp_path: Path, sqlite_sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoint nodes skip the job's cleanup: power-off and the next build's revert
    discard what the build left (as recovery treats them), so cleanup.sh's unstack and
    cleanup.ps1 would only delay the vote."""
    monkeypatch.setenv(WINRM_PASSWORD_ENV, "winrm-Secret-123")
    monkeypatch.setenv(ADMIN_PASSWORD_ENV, "admin-Secret-456")
    monkeypatch.setenv(SERVICE_PASSWORD_ENV, "service-Secret-789")
    with SimLab(tmp_path / "lab", hyperv_nodes=2, use_sshd=True, provisioned=True,
                lab_sets=1) as lab:
        config = make_config(lab, gerrit)
        assert all(n.provisioned for n in config.nodes)
        change = push(gerrit, {"nova/virt/hyperv/vmops.py": "# Zoë\n"})
        out, powered_off = run_provisioned_build(config, change, sqlite_sessions, tmp_path)
        assert out.result.outcome == Outcome.SUCCEEDED, out.result.summary
        rows = steps_of(sqlite_sessions, out.ctx.build_id)
        cleanup = [r for r in rows if r.name == "cleanup"]
        assert sorted(r.node or "" for r in cleanup) == ["devstack-1", "hv-1", "hv-2"]
        assert all(r.state == StepState.SKIPPED for r in cleanup)
        assert all("provisioned" in r.message for r in cleanup)
        for server in lab.winrm.values():
            assert "cleanup" not in [name for _n, name, _t in server.scripts]
        assert powered_off == [] and out.failed_nodes == []
        assert lab.parent is not None
        assert {lab.parent.vm(n).state for n in ("hv-1", "hv-2", "devstack-1")} == {"Off"}


def run_provisioned_build(config: Config, change: ChangeInfo,
                          sessions: sessionmaker[Session],
                          tmp_path: Path) -> tuple[BuildRun, list[str]]:
    """As the worker runs a build on checkpoint nodes: provision, the job, power-off."""
    from runners.provision import power_off_build, provision_build

    original = DevstackHypervRunner.prepare

    def prepare(self: DevstackHypervRunner, ctx: BuildContext) -> object:
        provision_build(ctx, sessions, answer_timeout=30)
        return original(self, ctx)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DevstackHypervRunner, "prepare", prepare)
        out = run_build(config, change, sessions, tmp_path)
    return out, power_off_build(out.ctx, out.failed_nodes)


def test_the_nodes_are_connected_while_the_change_merges(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    """The SSH handshake and each node's WinRM logon happen alongside prepare-change:
    the merge here goes on only once all three are connected."""
    from runners import devstack_hyperv
    from runners.ssh import SSHExecutor
    from runners.winrm import WinRMExecutor

    connected: list[str] = []
    lock, all_connected = threading.Lock(), threading.Event()

    def recording(original: Callable[[Any], None]) -> Callable[[Any], None]:
        def connect(self: Any) -> None:
            original(self)
            with lock:
                connected.append(self.node_name)
                if len(connected) == 3:
                    all_connected.set()
        return connect

    monkeypatch.setattr(SSHExecutor, "connect", recording(SSHExecutor.connect))
    monkeypatch.setattr(WinRMExecutor, "connect", recording(WinRMExecutor.connect))
    merge = devstack_hyperv.prepare_change

    def prepare_change(*args: Any, **kwargs: Any) -> Any:
        assert all_connected.wait(60), connected  # a synchronisation, not a time limit
        return merge(*args, **kwargs)

    monkeypatch.setattr(devstack_hyperv, "prepare_change", prepare_change)
    out = run_build(make_config(lab, gerrit), push(gerrit, {"nova/virt/hyperv/vmops.py": "#\n"}),
                    sqlite_sessions, tmp_path)
    assert out.result.outcome == Outcome.SUCCEEDED, out.result.summary
    assert sorted(connected) == ["devstack-1", "hv-1", "hv-2"]


def test_each_controller_file_is_uploaded_once(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    """The devstack step puts every controller file; a script run later is not sent
    again unless its bytes differ (a build that never reached the node has its
    cleanup script sent by cleanup itself, test_merge_conflict_is_reported_...)."""
    from runners.ssh import SSHExecutor

    sent: list[str] = []
    put = SSHExecutor.put

    def recording(self: SSHExecutor, data: bytes, remote_path: str, mode: int = 0o644) -> None:
        sent.append(remote_path)
        put(self, data, remote_path, mode)

    monkeypatch.setattr(SSHExecutor, "put", recording)
    out = run_build(make_config(lab, gerrit), push(gerrit, {"nova/virt/hyperv/vmops.py": "#\n"}),
                    sqlite_sessions, tmp_path)
    assert out.result.outcome == Outcome.SUCCEEDED, out.result.summary
    scripts = [p for p in sent if p.endswith(".sh")]
    assert sorted(scripts) == sorted(set(scripts)), scripts
    assert {p.rsplit("/", 1)[1] for p in scripts} >= {
        "prepare-checkout.sh", "stack.sh", "check-services.sh", "tempest.sh",
        "collect-logs.sh", "cleanup.sh"}
