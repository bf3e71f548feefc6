"""The real Worker running the devstack-hyperv job against the simulated lab and Gerrit's git."""

from __future__ import annotations

import gzip
import shlex
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.config import Config, DevstackHypervJob, parse_config
from ci.models import (
    Build,
    BuildState,
    BuildStep,
    Node,
    NodeState,
    Report,
    ReportState,
    TestResult,
)
from runners import pool
from runners.devstack_hyperv import DevstackHypervRunner
from runners.registry import make_runner
from runners.steps import REDACTED
from runners.worker import Worker
from sim.gerrit_state import GerritState
from sim.lab import ADMIN_PASSWORD_ENV, SERVICE_PASSWORD_ENV, WINRM_PASSWORD_ENV, SimLab

PROJECT = "openstack/nova"
BRANCH = "unmaintained/2023.1"
SUBJECT = "Hyper-V: 修复实例 Zoë's VHD « quoted » $(rm -rf /)"
OWNER = "张伟"
# Characters that every encoding the job uses changes: `@ / %` (transport_url's
# percent-encoding), `'` (local.conf's shell quoting), `$` (oslo.config's `$$`),
# `é` (UTF-8 and UTF-16 bytes differ from the text).
SECRETS = {
    WINRM_PASSWORD_ENV: "winrm-Sé'cret/1@$x%",
    ADMIN_PASSWORD_ENV: "admin-Sé'cret/2@$y%",
    SERVICE_PASSWORD_ENV: "service-Sé'cret/3@$z%",
}


def secret_texts(secret: str) -> list[str]:
    """The forms a secret takes in the job's files (an oracle independent of runners/)."""
    return [secret, quote(secret, safe=""), shlex.quote(secret), secret.replace("$", "$$")]


def secret_bytes(secret: str) -> list[bytes]:
    """Those forms as a published file may hold them: UTF-8 and UTF-16-LE."""
    return [t.encode(enc) for t in secret_texts(secret) for enc in ("utf-8", "utf-16-le")]


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimLab]:
    for env, value in SECRETS.items():
        monkeypatch.setenv(env, value)
    # Inside another git work tree with an origin, as `make demo` puts its lab
    # inside the project's clone: the job must not mistake it for devstack's.
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "remote", "add", "origin",
                    str(tmp_path / "no-such-repo")], check=True)
    with SimLab(tmp_path / "lab", hyperv_nodes=2, use_sshd=True) as started:
        yield started


@pytest.fixture
def gerrit(tmp_path: Path) -> GerritState:
    return GerritState(tmp_path / "gerrit")


def make_config(lab: SimLab, gerrit: GerritState, tmp_path: Path, **job: Any) -> Config:
    return parse_config({
        "gerrit": {"host": "127.0.0.1", "username": "ci", "key_file": "/nonexistent/key",
                   "known_hosts": "/nonexistent/known_hosts",
                   "git_url": gerrit.root.resolve().as_uri() + "/git/{project}.git"},
        "projects": [{"name": PROJECT, "jobs": ["hyperv"]}],
        "jobs": {"hyperv": {
            "type": "devstack-hyperv", **lab.job_overrides(),
            "stack_timeout": 60, "services_timeout": 5, "command_timeout": 30,
            "tempest": {"concurrency": 2, "timeout": 120}, **job}},
        "nodes": lab.node_configs(),
        # Small files are gzipped too, so the secrets check also reads compressed logs.
        "logs": {"dir": str(tmp_path / "logs"), "url": "http://logs.example.org/",
                 "gzip_over_bytes": 2048},
        "worker": {"lease_seconds": 30, "max_attempts": 3,
                   "git_cache_dir": str(tmp_path / "git-cache")},
    })


def enqueue_change(sessions: sessionmaker[Session], gerrit: GerritState) -> int:
    """Push a change to the simulated Gerrit and queue the job for it, as the listener would."""
    # nova's in-tree Hyper-V driver lives on this branch (removed from 2024.1 on).
    pushed = gerrit.push(PROJECT, branch=BRANCH, files={"nova/virt/hyperv/vmops.py": "# 实例\n"},
                         subject=SUBJECT, owner=OWNER)
    with sessions() as session, session.begin():
        patchset = queue.upsert_patchset(session, queue.ChangeInfo(
            number=int(pushed["change"]), project=PROJECT, branch=BRANCH,
            patchset=int(pushed["patchset"]), subject=SUBJECT, owner_name=OWNER,
            ref=str(pushed["ref"]), revision=str(pushed["revision"])))
        build = queue.enqueue(session, patchset, "hyperv", "patchset-created")
        assert build is not None
        return build.id


def sync_pool(config: Config, sessions: sessionmaker[Session]) -> None:
    # What `Worker.run` does first; `run_once` (driven here) does not.
    with sessions() as session, session.begin():
        pool.sync_nodes(session, config.nodes)


def node_states(sessions: sessionmaker[Session]) -> dict[str, tuple[str, int | None]]:
    with sessions() as session:
        return {n.name: (n.state, n.build_id) for n in session.scalars(select(Node))}


def builds(sessions: sessionmaker[Session]) -> list[Build]:
    with sessions() as session:
        rows = list(session.scalars(select(Build).order_by(Build.id)))
        for row in rows:
            row.report, row.tests  # noqa: B018 - load before the session closes
            session.expunge(row)
        return rows


def published_files(log_dir: Path) -> dict[Path, bytes]:
    """Every published file's content, gunzipped."""
    found = {}
    for path in log_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found[path] = gzip.decompress(data) if path.suffix == ".gz" else data
    return found


def test_success_publishes_logs_without_secrets(lab: SimLab, gerrit: GerritState,
                                                tmp_path: Path,
                                                sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit, tmp_path)
    sync_pool(config, sqlite_sessions)
    build_id = enqueue_change(sqlite_sessions, gerrit)
    runners: list[Any] = []

    def make(c: Config, job: str) -> Any:
        runners.append(make_runner(c, job))
        return runners[-1]

    assert Worker(config, sqlite_sessions, name="w1", runner_factory=make).run_once()

    (build,) = builds(sqlite_sessions)
    assert build.id == build_id
    assert build.state == BuildState.SUCCEEDED, build.summary
    # The worker-side scratch tree (the merge's checkout) is removed in the background.
    for thread in threading.enumerate():
        if thread.name == f"close-build-{build_id}":
            thread.join()
    assert not runners[0].merged.checkout.exists() and not runners[0].merged.bundle.exists()
    assert node_states(sqlite_sessions) == {
        "devstack-1": (NodeState.READY, None), "hv-1": (NodeState.READY, None),
        "hv-2": (NodeState.READY, None)}
    assert build.report is not None
    assert build.report.vote == 1 and build.report.state == ReportState.PENDING
    assert build.tests and all(t.test_id.startswith("tempest.") for t in build.tests)
    assert any(t.status == "success" for t in build.tests)
    # Every shell the build opened on a Windows node was deleted (MaxShellsPerUser: 30).
    assert {name: node.open_shells for name, node in lab.winrm.items()} == {"hv-1": 0, "hv-2": 0}
    assert all(node.stats["Create"] == node.stats["Delete"] > 0 for node in lab.winrm.values())

    assert build.log_path is not None
    log_dir = Path(build.log_path)
    rel = log_dir.relative_to(tmp_path / "logs")
    assert rel.name == f"hyperv-{build_id}"
    assert build.log_url == f"http://logs.example.org/{rel.as_posix()}/"
    files = published_files(log_dir)
    names = {p.relative_to(log_dir).as_posix() for p in files}
    # The rendered configs (which hold the passwords before redaction) are published...
    for name in ("rendered/devstack-1-local.conf", "rendered/hv-1-nova.conf",
                 "rendered/hv-2-neutron_hyperv_agent.conf"):
        assert name in names or name + ".gz" in names, sorted(names)
    assert any(p.suffix == ".gz" for p in files)
    assert any(p.name in ("stack.sh.log", "stack.sh.log.gz") for p in files)
    assert any(p.parts[-3:] == ("hv-1", "logs", "nova-compute.log") for p in files)
    rendered = b"".join(data for path, data in files.items() if "rendered" in path.parts)
    assert REDACTED.encode() in rendered  # ...masked, not merely missing
    # ...and no published file, text or binary, holds a configured secret in any form.
    for path, data in files.items():
        for secret in SECRETS.values():
            for form in secret_bytes(secret):
                assert form not in data, (path, form)
    # Nor does what the dashboard shows from the database.
    with sqlite_sessions() as session:
        shown = [build.summary, build.report.message]
        shown += [t.details or "" for t in session.scalars(select(TestResult))]
        shown += [s.output_tail or "" for s in session.scalars(select(BuildStep))]
        shown += [s.message or "" for s in session.scalars(select(BuildStep))]
    for secret in SECRETS.values():
        for form in secret_texts(secret):
            assert all(form not in text for text in shown), form


def test_node_killed_mid_build_goes_offline_and_the_retry_runs_elsewhere(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit, tmp_path, hyperv_nodes=1)
    sync_pool(config, sqlite_sessions)
    first_id = enqueue_change(sqlite_sessions, gerrit)
    # The pool hands out free nodes by name: the first build gets hv-1.
    victim = lab.winrm["hv-1"]
    victim.faults.set("install", hang=True)
    killed = threading.Event()
    mid_build: dict[Path, bytes] = {}

    def kill_when_installing() -> None:
        while not any(name == "install" for _n, name, _t in victim.scripts):
            if killed.wait(0.05):
                return
        # What the dashboard's /logs/ would serve while the build runs.
        mid_build.update(published_files(tmp_path / "logs"))
        victim.kill()
        killed.set()

    def runner(cfg: Config, job_name: str) -> DevstackHypervRunner:
        job = cfg.jobs[job_name]
        assert isinstance(job, DevstackHypervJob)
        # A short backoff: the dead node's retries are refused at once anyway.
        return DevstackHypervRunner(job, cache_dir=cfg.worker.git_cache_dir, winrm_backoff=0.05)

    worker = Worker(config, sqlite_sessions, name="w1", runner_factory=runner)
    killer = threading.Thread(target=kill_when_installing, daemon=True)
    killer.start()
    try:
        assert worker.run_once()
    finally:
        killed.set()
        killer.join(timeout=30)

    # The log tree is browsable from the start (log_url is set when the build starts):
    # step logs are there; collected files (rendered configs) wait until redacted.
    assert any(p.name.endswith("-hyperv-compute-hv-1.log") for p in mid_build), sorted(mid_build)
    assert not any(p.parent.name == "rendered" for p in mid_build), sorted(mid_build)
    for path, data in mid_build.items():
        for secret in SECRETS.values():
            for form in secret_bytes(secret):
                assert form not in data, (path, form)
    first, retry = builds(sqlite_sessions)
    assert first.id == first_id
    assert first.state == BuildState.ERROR, first.summary
    assert "hv-1" in first.summary
    assert first.report is None  # an error is retried, never voted on
    assert retry.state == BuildState.QUEUED and retry.attempt == 2
    assert retry.retry_of_id == first.id
    states = node_states(sqlite_sessions)
    assert states["hv-1"][0] == NodeState.OFFLINE
    assert states["hv-2"] == (NodeState.READY, None)
    assert states["devstack-1"] == (NodeState.READY, None)

    # The retry takes the healthy node and is not affected by the dead one.
    assert worker.run_once()
    first, retry = builds(sqlite_sessions)
    assert retry.state == BuildState.SUCCEEDED, retry.summary
    assert retry.report is not None and retry.report.vote == 1
    assert retry.tests
    assert any(name == "install" for _n, name, _t in lab.winrm["hv-2"].scripts)
    states = node_states(sqlite_sessions)
    assert states["hv-1"][0] == NodeState.OFFLINE
    assert states["hv-2"] == (NodeState.READY, None)
    with sqlite_sessions() as session:
        assert [r.build_id for r in session.scalars(select(Report))] == [retry.id]
    assert not worker.run_once()  # nothing left in the queue
