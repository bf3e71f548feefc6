"""Dashboard fixtures: a config, the app on the shared database fixtures, and a
small world of changes, builds, steps, tests, a report and nodes made through
the real models and queue functions."""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import ClassVar

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from ci import accounts, queue
from ci.config import Config, parse_config
from ci.models import (
    BuildState,
    BuildStep,
    Node,
    NodeState,
    Report,
    StepState,
    TestResult,
    utcnow,
)
from dashboard import create_app

EVIL_SUBJECT = "修复 Hyper-V 实例名 <script>alert('pwned')</script> & “quotes”"
OWNER = "José Müller 张伟"
NOVA_SUBJECT = "Add vhdx résumé support — naïve"
NOVA_OWNER = "Zoë <b>Ødegård</b>"
FAIL_DETAILS = "Traceback (most recent call last):\n  AssertionError: 实例 'vm-ü' <not> found"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass(frozen=True)
class World:
    """Ids of the rows `populate` made."""

    finished_id: int  # change 1001 ps 1: failed, with steps, tests, a report and logs
    running_id: int  # change 1001 ps 2: running, in its second step
    queued_id: int  # change 1002 ps 1: queued
    running_step_id: int
    build_log_dir: Path
    # The untrusted texts, for tests to look for.
    SUBJECT: ClassVar[str] = EVIL_SUBJECT
    OWNER: ClassVar[str] = OWNER
    NOVA_SUBJECT: ClassVar[str] = NOVA_SUBJECT
    NOVA_OWNER: ClassVar[str] = NOVA_OWNER
    FAIL_DETAILS: ClassVar[str] = FAIL_DETAILS


def make_config(tmp_path: Path, database_url: str = "sqlite://") -> Config:
    """A valid configuration with two projects and local jobs; logs under tmp_path."""
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    return parse_config({
        "database": {"url": database_url},
        "gerrit": {"host": "127.0.0.1", "username": "hyperv-ci",
                   "key_file": str(tmp_path / "id_ed25519"),
                   "known_hosts": str(tmp_path / "known_hosts")},
        "projects": [
            {"name": "openstack/compute-hyperv", "jobs": ["hyperv-local", "hyperv-extra"]},
            {"name": "openstack/nova", "jobs": ["hyperv-local"]},
        ],
        "jobs": {
            "hyperv-local": {"type": "local", "command": ["true"]},
            "hyperv-extra": {"type": "local", "command": ["true"]},
        },
        "logs": {"dir": str(logs), "url": "http://127.0.0.1:8080/logs/"},
        "dashboard": {"secret_key_file": str(tmp_path / "dashboard-secret-key")},
    })


def populate(sessions: sessionmaker[Session], logs_dir: Path) -> World:
    """Create the dashboard's test world through the queue functions."""
    with sessions() as s, s.begin():
        ps1 = queue.upsert_patchset(s, queue.ChangeInfo(
            number=1001, project="openstack/compute-hyperv", branch="master", patchset=1,
            subject=EVIL_SUBJECT, owner_name=OWNER, url="https://review.example.org/1001",
            revision="a" * 40, uploader_name=OWNER, files=("compute_hyperv/nova/vmops.py",)))
        finished = queue.enqueue(s, ps1, "hyperv-local", "patchset-created")
        assert finished is not None
        assert queue.claim_next(s, "worker-1", 120) is not None
        build_dir = logs_dir / "1001" / "1" / str(finished.id)
        build_dir.mkdir(parents=True)
        (build_dir / "01-prepare.log").write_text("preparing 准备\n", encoding="utf-8")
        with gzip.open(build_dir / "02-tempest.log.gz", "wt", encoding="utf-8") as out:
            out.write("tempest ran: 3 tests, 1 failure — 失败\n")
        start = utcnow() - timedelta(minutes=5)
        s.add_all([
            BuildStep(build_id=finished.id, name="prepare", node="devstack-1",
                      state=StepState.SUCCEEDED, started_at=start,
                      finished_at=start + timedelta(seconds=42), exit_code=0,
                      log_name="01-prepare.log", output_tail="preparing 准备\n"),
            BuildStep(build_id=finished.id, name="tempest", node="devstack-1",
                      state=StepState.FAILED, started_at=start + timedelta(seconds=42),
                      finished_at=start + timedelta(seconds=200), exit_code=1,
                      log_name="02-tempest.log.gz", output_tail="1 failure\n",
                      message="tempest: 1 test failed"),
            TestResult(build_id=finished.id, test_id="tempest.api.compute.test_ok",
                       status="success", duration=1.5),
            TestResult(build_id=finished.id,
                       test_id="tempest.api.compute.test_名前[id-1,<smoke>]",
                       status="fail", duration=2.25, details=FAIL_DETAILS),
            TestResult(build_id=finished.id, test_id="tempest.scenario.test_skipped",
                       status="skip", details="not on Hyper-V"),
            Report(build_id=finished.id, project="openstack/compute-hyperv",
                   change_number=1001, patchset_number=1, label="Verified", vote=-1,
                   message="Build failed. 构建失败 <em>not html</em>"),
        ])
        assert queue.finish(s, finished.id, "worker-1", BuildState.FAILED, "1 test failed",
                            log_path=str(build_dir)) is not None

        ps2 = queue.upsert_patchset(s, queue.ChangeInfo(
            number=1001, project="openstack/compute-hyperv", branch="master", patchset=2,
            revision="b" * 40))
        running = queue.enqueue(s, ps2, "hyperv-local", "patchset-created")
        assert running is not None
        assert queue.claim_next(s, "worker-1", 120) is not None
        s.add(BuildStep(build_id=running.id, name="prepare", node="devstack-1",
                        state=StepState.SUCCEEDED, finished_at=utcnow(), exit_code=0,
                        log_name="01-prepare.log"))
        s.flush()
        live = BuildStep(build_id=running.id, name="stack.sh", node="devstack-1",
                         state=StepState.RUNNING, log_name="02-stack.sh.log",
                         output_tail="+ ./stack.sh\nstarting nova-compute 开始\n")
        s.add(live)

        ps_nova = queue.upsert_patchset(s, queue.ChangeInfo(
            number=1002, project="openstack/nova", branch="stable/2023.1", patchset=1,
            subject=NOVA_SUBJECT, owner_name=NOVA_OWNER))
        queued = queue.enqueue(s, ps_nova, "hyperv-local", "comment: recheck")
        assert queued is not None

        s.add_all([
            Node(name="devstack-1", label="devstack", address="10.0.0.5",
                 state=NodeState.RESERVED, build_id=running.id),
            Node(name="hv-1", label="hyperv", address="10.0.0.11"),
            Node(name="hv-2", label="hyperv", address="10.0.0.12", state=NodeState.OFFLINE,
                 drained=True, health_failures=3, message="WinRM: connection refused <x>"),
        ])
        s.flush()
        return World(finished_id=finished.id, running_id=running.id, queued_id=queued.id,
                     running_step_id=live.id, build_log_dir=build_dir)


@pytest.fixture
def fast_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2 at the lowest cost, the unknown names' dummy hash too: the real cost
    (~0.1 s a hash) is not what the login tests are about."""
    fast = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    monkeypatch.setattr(accounts, "_HASHER", fast)
    dummy = fast.hash("an unknown name's dummy")
    monkeypatch.setattr(accounts, "dummy_hash", lambda: dummy)


@pytest.fixture
def dash_config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
def dash_sessions(sqlite_sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """The database the app reads; test_api.py overrides it to run on both engines."""
    return sqlite_sessions


@pytest.fixture
def app(dash_config: Config, dash_sessions: sessionmaker[Session]) -> Flask:
    return create_app(dash_config, sessions=dash_sessions, test_config={"TESTING": True})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def world(dash_sessions: sessionmaker[Session], dash_config: Config) -> World:
    return populate(dash_sessions, dash_config.logs.dir)


OPERATOR_NAME = "opérateur Zoë"
OPERATOR_PASSWORD = "correct horse battery 电池"


@pytest.fixture
def operator_account(dash_sessions: sessionmaker[Session]) -> str:
    """An operator account (a non-ASCII name) in the app's database; returns its name."""
    from ci import accounts

    with dash_sessions() as s, s.begin():
        accounts.create(s, OPERATOR_NAME, OPERATOR_PASSWORD)
    return OPERATOR_NAME


@pytest.fixture
def logged_in(client: FlaskClient, operator_account: str) -> str:
    """The test client's session is the operator's (as after /login; test_auth.py
    tests the login itself). Returns the operator's name."""
    from dashboard.auth import SESSION_USER

    with client.session_transaction() as browser_session:
        browser_session[SESSION_USER] = operator_account
    return operator_account


@pytest.fixture
def csrf(client: FlaskClient) -> Callable[[str], str]:
    """Load a page as a browser would and return the CSRF token of its forms."""

    def token(path: str) -> str:
        response = client.get(path)
        assert response.status_code == 200
        match = CSRF_RE.search(response.get_data(as_text=True))
        assert match, f"no CSRF field on {path}"
        return match.group(1)

    return token
