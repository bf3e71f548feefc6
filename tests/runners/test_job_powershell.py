"""A rendered Windows script that PowerShell would refuse ends the build as a CI error.

The worker runs the job against the simulated lab (OpenSSH's sshd, the
simulated WinRM nodes); one node's rendered script is edited on its way out
of `render_job`. The simulated node answers as powershell.exe does, and the
build must say so: a CI error with PowerShell's message in the step's log,
never a Verified -1 on the change.
"""

from __future__ import annotations

import dataclasses
import gzip
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.config import Config, parse_config
from ci.models import Build, BuildState, BuildStep, StepState
from runners import devstack_hyperv, pool
from runners.render import RenderedJob
from runners.worker import Worker
from sim.gerrit_state import GerritState
from sim.lab import ADMIN_PASSWORD_ENV, SERVICE_PASSWORD_ENV, WINRM_PASSWORD_ENV, SimLab

PROJECT = "openstack/compute-hyperv"
# A branch that still carries the Hyper-V code (networking-hyperv's plugin included).
BRANCH = "stable/2023.1"
SUBJECT = "Fix the VHDX path for 实例 « Zoë »"


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimLab]:
    monkeypatch.setenv(WINRM_PASSWORD_ENV, "winrm-Secret-123")
    monkeypatch.setenv(ADMIN_PASSWORD_ENV, "admin-Secret-456")
    monkeypatch.setenv(SERVICE_PASSWORD_ENV, "service-Secret-789")
    with SimLab(tmp_path / "lab", hyperv_nodes=1, use_sshd=True) as started:
        yield started


def make_config(lab: SimLab, gerrit: GerritState, tmp_path: Path) -> Config:
    return parse_config({
        "gerrit": {"host": "127.0.0.1", "username": "ci", "key_file": "/nonexistent/key",
                   "known_hosts": "/nonexistent/known_hosts",
                   "git_url": gerrit.root.resolve().as_uri() + "/git/{project}.git"},
        "projects": [{"name": PROJECT, "jobs": ["hyperv"]}],
        "jobs": {"hyperv": {
            "type": "devstack-hyperv", **lab.job_overrides(),
            "stack_timeout": 60, "services_timeout": 5, "command_timeout": 30,
            "tempest": {"concurrency": 2, "timeout": 120}}},
        "nodes": lab.node_configs(),
        "logs": {"dir": str(tmp_path / "logs"), "url": "http://logs.example.org/"},
        "worker": {"lease_seconds": 30, "max_attempts": 1,
                   "git_cache_dir": str(tmp_path / "git-cache")},
    })


def edit_rendered(monkeypatch: pytest.MonkeyPatch, step: str,
                  edit: Callable[[str], str]) -> None:
    """Every render of the job passes `step`'s script of node hv-1 through `edit`."""
    real = devstack_hyperv.render_job

    def render(*args: Any, **kwargs: Any) -> RenderedJob:
        rendered = real(*args, **kwargs)
        target = rendered.file_for("hv-1", step)
        rendered.files[target.name] = dataclasses.replace(target, text=edit(target.text))
        return rendered

    monkeypatch.setattr(devstack_hyperv, "render_job", render)


def after_error_preference(line: str) -> Callable[[str], str]:
    """Insert `line` right after the script's `$ErrorActionPreference = 'Stop'`."""
    def edit(text: str) -> str:
        marker = "$ErrorActionPreference = 'Stop'\n"
        assert marker in text
        return text.replace(marker, marker + line + "\n", 1)
    return edit


def run_one_build(config: Config, sessions: sessionmaker[Session], gerrit: GerritState,
                  ) -> tuple[Build, list[BuildStep]]:
    pushed = gerrit.push(PROJECT, branch=BRANCH, files={"compute_hyperv/nova/vmops.py": "# 实例\n"},
                         subject=SUBJECT, owner="Zoë")
    with sessions() as session, session.begin():
        pool.sync_nodes(session, config.nodes)
        patchset = queue.upsert_patchset(session, queue.ChangeInfo(
            number=int(pushed["change"]), project=PROJECT, branch=BRANCH,
            patchset=int(pushed["patchset"]), subject=SUBJECT, owner_name="Zoë",
            ref=str(pushed["ref"]), revision=str(pushed["revision"])))
        assert queue.enqueue(session, patchset, "hyperv", "patchset-created") is not None
    assert Worker(config, sessions, name="w1").run_once()
    with sessions() as session:
        build = session.scalars(select(Build)).one()
        build.report  # noqa: B018 - load before the session closes
        steps = list(session.scalars(select(BuildStep).where(BuildStep.build_id == build.id)))
        session.expunge_all()
    return build, steps


def published_log(build: Build, row: BuildStep) -> str:
    assert build.log_path and row.log_name
    path = Path(build.log_path) / row.log_name
    if not path.exists():
        path = path.with_name(path.name + ".gz")
        return gzip.decompress(path.read_bytes()).decode("utf-8")
    return path.read_text(encoding="utf-8")


COMMAND_NOT_FOUND = (
    "The term 'Get-WindowsFeatur' is not recognized as the name of a cmdlet, function, "
    "script file, or operable program.")
PARAMETER_NOT_FOUND = "A parameter cannot be found that matches parameter name 'Recurce'."


@pytest.mark.parametrize(("step", "edit", "step_name", "expected"), [
    pytest.param("bootstrap", after_error_preference("Get-WindowsFeatur -Name 'Hyper-V'"),
                 "windows-bootstrap", [COMMAND_NOT_FOUND, "CommandNotFoundException"],
                 id="misspelled-cmdlet"),
    pytest.param("teardown", after_error_preference("Get-ChildItem -Path $Root -Recurce"),
                 "windows-teardown", [PARAMETER_NOT_FOUND, "ParameterBindingException",
                                      "NamedParameterNotFound"],
                 id="parameter-the-cmdlet-lacks"),
    pytest.param("bootstrap", lambda text: text + "\nexit 42\n", "windows-bootstrap",
                 ["42"], id="exit-42"),
])
def test_refused_script_is_a_ci_error_with_powershells_message(
        step: str, edit: Callable[[str], str], step_name: str, expected: list[str],
        lab: SimLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        sqlite_sessions: sessionmaker[Session]) -> None:
    gerrit = GerritState(tmp_path / "gerrit")
    config = make_config(lab, gerrit, tmp_path)
    edit_rendered(monkeypatch, step, edit)

    build, steps = run_one_build(config, sqlite_sessions, gerrit)

    assert build.state == BuildState.ERROR, build.summary
    # The summary (and so the vote's comment) names the Windows step, not another failure.
    assert f"{step}.ps1 failed on hv-1" in build.summary, build.summary
    [row] = [r for r in steps if r.name == step_name and r.node == "hv-1"]
    assert row.state == StepState.ERROR, [(r.name, r.node, r.state) for r in steps]
    log = published_log(build, row)
    for text in expected:
        assert text in log, log[-2000:]
    # Nothing downstream ran, and the vote is never a -1 on the change.
    assert all(r.state == StepState.SKIPPED for r in steps if r.name == "tempest")
    assert build.report is not None and build.report.vote != -1
    assert "Build error: the CI itself failed" in build.report.message
