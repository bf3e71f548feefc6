"""Actions and authority: refused (and nothing changed) without an operator; audited
with one; Force build only for a patchset the file filter excludes, and its vote
says who forced it; the web Enable goes through a worker's clean and check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from ci import node_recovery, queue
from ci.config import Config, parse_config
from ci.models import AuditEntry, Build, BuildState, Node, NodeState, OfflineCause, utcnow
from ci.report import queue_report
from tests.dashboard.conftest import OPERATOR_NAME

Csrf = Any

pytestmark = pytest.mark.usefixtures("fast_hashes")


@pytest.fixture
def dash_config(tmp_path: Path) -> Config:
    # compute-hyperv watched whole; nova only for its Hyper-V files on stable branches.
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    return parse_config({
        "gerrit": {"host": "127.0.0.1", "username": "hyperv-ci",
                   "key_file": str(tmp_path / "id_ed25519"),
                   "known_hosts": str(tmp_path / "known_hosts")},
        "projects": [
            {"name": "openstack/compute-hyperv", "jobs": ["hyperv-local", "hyperv-extra"]},
            {"name": "openstack/nova", "branches": ["stable/.*"],
             "files": ["^nova/virt/hyperv/"], "jobs": ["hyperv-local"]},
        ],
        "jobs": {"hyperv-local": {"type": "local", "command": ["true"]},
                 "hyperv-extra": {"type": "local", "command": ["true"], "voting": True}},
        "logs": {"dir": str(logs), "url": "http://127.0.0.1:8080/logs/"},
        "dashboard": {"secret_key_file": str(tmp_path / "dashboard-secret-key")},
    })


def _snapshot(sessions: sessionmaker[Session]) -> tuple[Any, ...]:
    with sessions() as s:
        builds = s.execute(select(Build.id, Build.state, Build.abort_requested,
                                  Build.forced_by).order_by(Build.id)).all()
        pool = s.execute(select(Node.name, Node.state, Node.offline_cause, Node.drained,
                                Node.message).order_by(Node.name)).all()
        audited = s.scalar(select(func.count()).select_from(AuditEntry))
    return tuple(builds), tuple(pool), audited


def _posts(world: Any) -> list[str]:
    return [f"/builds/{world.running_id}/abort", "/changes/1001/2/recheck",
            "/changes/1002/1/force", "/nodes/hv-1/drain", "/nodes/hv-2/undrain",
            "/nodes/hv-2/enable"]


def test_logged_out_every_action_is_refused_and_changes_nothing(
        client: FlaskClient, world: Any, csrf: Csrf,
        dash_sessions: sessionmaker[Session]) -> None:
    before = _snapshot(dash_sessions)
    token = csrf("/nodes")  # a real token of this session: the login is what is missing
    for path in _posts(world):
        browser = client.post(path, data={"csrf_token": token, "next": "/nodes"})
        assert browser.status_code == 303, path
        assert browser.headers["Location"] == "/login?next=/nodes", path
        script = client.post(path, data={"csrf_token": token},
                             headers={"Accept": "application/json"})
        assert script.status_code == 401, path
        assert script.get_json() == {"error": "login required"}
    assert _snapshot(dash_sessions) == before


def test_an_operators_actions_are_recorded_and_shown(
        client: FlaskClient, world: Any, csrf: Csrf, logged_in: str,
        dash_sessions: sessionmaker[Session]) -> None:
    token = csrf("/nodes")
    for path in (f"/builds/{world.running_id}/abort", "/changes/1001/2/recheck",
                 "/nodes/hv-1/drain", "/nodes/hv-1/undrain", "/nodes/hv-2/enable"):
        assert client.post(path, data={"csrf_token": token}).status_code == 303, path
    with dash_sessions() as s:
        rows = s.execute(select(AuditEntry.actor, AuditEntry.auth, AuditEntry.source,
                                AuditEntry.action, AuditEntry.target_kind,
                                AuditEntry.target_id).order_by(AuditEntry.id)).all()
    me = (OPERATOR_NAME, "local", "127.0.0.1")
    assert [tuple(r) for r in rows] == [
        (*me, "abort", "build", str(world.running_id)),
        (*me, "recheck", "patchset", "1001,2"),
        (*me, "drain", "node", "hv-1"), (*me, "undrain", "node", "hv-1"),
        (*me, "enable", "node", "hv-2")]
    build_page = client.get(f"/builds/{world.running_id}").get_data(as_text=True)
    actions = build_page.split('class="audit-partial"', 1)[1]
    assert "abort" in actions and "recheck" in actions and OPERATOR_NAME in actions
    node_page = client.get("/nodes").get_data(as_text=True).split('class="audit-partial"', 1)[1]
    assert "drain" in node_page and "enable" in node_page and "abort" not in node_page
    listing = client.get("/audit").get_data(as_text=True)
    assert listing.count(f'<td class="audit-actor">{OPERATOR_NAME}') == 5
    assert f'href="/builds/{world.running_id}"' in listing
    only_nodes = client.get("/audit?kind=node").get_data(as_text=True)
    assert only_nodes.count("audit-actor") == 3


def test_a_refused_csrf_records_nothing(client: FlaskClient, world: Any, logged_in: str,
                                        dash_sessions: sessionmaker[Session]) -> None:
    before = _snapshot(dash_sessions)
    for path in _posts(world):
        assert client.post(path, data={"csrf_token": "forgé"}).status_code == 400, path
    assert _snapshot(dash_sessions) == before


def _excluded(sessions: sessionmaker[Session], number: int = 2001,
              files: tuple[str, ...] | None = ("nova/compute/manager.py",)) -> None:
    with sessions() as s, s.begin():
        queue.upsert_patchset(s, queue.ChangeInfo(
            number=number, project="openstack/nova", branch="stable/2023.1", patchset=1,
            subject="修复 compute", files=files))


def test_an_excluded_changes_page_offers_no_plain_recheck(
        client: FlaskClient, world: Any, dash_sessions: sessionmaker[Session],
        operator_account: str) -> None:
    _excluded(dash_sessions)
    page = client.get("/changes/2001").get_data(as_text=True)
    assert ">Recheck</button>" not in page and ">Force build</button>" not in page
    assert "Touches none of the watched files" in page and "Log in to force a build" in page
    watched = client.get("/changes/1001").get_data(as_text=True)
    assert ">Recheck</button>" in watched and "Force build" not in watched
    with client.session_transaction() as browser_session:
        browser_session["user"] = operator_account
    page = client.get("/changes/2001").get_data(as_text=True)
    assert ">Recheck</button>" not in page and ">Force build</button>" in page


def test_force_build_queues_it_marked_and_its_vote_says_so(
        client: FlaskClient, world: Any, csrf: Csrf, logged_in: str, dash_config: Config,
        dash_sessions: sessionmaker[Session]) -> None:
    _excluded(dash_sessions)
    response = client.post("/changes/2001/1/force", data={"csrf_token": csrf("/changes/2001")})
    assert response.status_code == 303
    assert "the vote will say it was forced by" in client.get(
        "/changes/2001").get_data(as_text=True)
    with dash_sessions() as s, s.begin():
        [build] = s.scalars(select(Build).where(Build.forced_by.is_not(None))).all()
        assert (build.job, build.reason, build.forced_by, build.state) == (
            "hyperv-local", "forced from the dashboard", OPERATOR_NAME, BuildState.QUEUED)
        assert s.scalar(select(AuditEntry.action).where(
            AuditEntry.target_id == "2001,1")) == "force-build"
        build.state, build.started_at, build.finished_at = (BuildState.SUCCEEDED, utcnow(),
                                                            utcnow())
        report = queue_report(s, build, dash_config)
        assert report is not None
        assert f"Forced by {OPERATOR_NAME} from the" in report.message
        assert "Reply 'recheck'" not in report.message  # a recheck would not run it


def test_force_build_is_refused_where_a_recheck_runs(
        client: FlaskClient, world: Any, csrf: Csrf, logged_in: str,
        dash_sessions: sessionmaker[Session]) -> None:
    _excluded(dash_sessions, 2004, ("nova/virt/hyperv/vmops.py",))
    token = csrf("/changes/2004")
    assert client.post("/changes/2004/1/force", data={"csrf_token": token}).status_code == 303
    assert "is not excluded by the file filter: use Recheck" in client.get(
        "/changes/2004").get_data(as_text=True)
    with dash_sessions() as s:
        assert s.scalars(select(Build.id).where(
            Build.reason == "forced from the dashboard")).all() == []


def test_a_normal_builds_vote_still_offers_recheck(world: Any, dash_config: Config,
                                                   dash_sessions: sessionmaker[Session]) -> None:
    with dash_sessions() as s, s.begin():
        build = s.get(Build, world.queued_id)
        assert build is not None
        build.state, build.started_at, build.finished_at = (BuildState.SUCCEEDED, utcnow(),
                                                            utcnow())
        report = queue_report(s, build, dash_config)
        assert report is not None
        assert "Forced by" not in report.message and "Reply 'recheck'" in report.message


def test_web_enable_waits_for_a_workers_clean_and_check(
        client: FlaskClient, world: Any, csrf: Csrf, logged_in: str,
        dash_sessions: sessionmaker[Session]) -> None:
    assert client.post("/nodes/hv-2/enable", data={"csrf_token": csrf("/nodes")}
                       ).status_code == 303
    with dash_sessions() as s:
        node = s.scalar(select(Node).where(Node.name == "hv-2"))
        assert node is not None
        assert (node.state, node.offline_cause) == (NodeState.OFFLINE,
                                                    OfflineCause.ENABLE_REQUESTED)
    assert "enable requested by" in client.get("/nodes").get_data(as_text=True)
    # What a worker's keeper does next (runners/recovery.py recover_nodes): claim it,
    # clean and check it, apply the verdict.
    with dash_sessions() as s, s.begin():
        [task] = node_recovery.claim_recovery(s, "worker-7")
        assert task.name == "hv-2"
        state = s.scalar(select(Node.state).where(Node.name == "hv-2"))
        assert state == NodeState.CLEANING
    with dash_sessions() as s, s.begin():
        failed = node_recovery.recovery_verdict(node_recovery.Probe(True, "cleaned"),
                                        node_recovery.Probe(False, "WinRM: refused"), None)
        assert node_recovery.finish_recovery(s, "hv-2", failed)
    with dash_sessions() as s:
        node = s.scalar(select(Node).where(Node.name == "hv-2"))
        assert node is not None and node.state == NodeState.OFFLINE
        assert "the health check failed: WinRM: refused" in node.message
    # A node already in service is left alone.
    client.post("/nodes/hv-1/enable", data={"csrf_token": csrf("/nodes")})
    assert "Node hv-1 is already in service." in client.get("/nodes").get_data(as_text=True)
    with dash_sessions() as s:
        assert s.scalar(select(Node.state).where(Node.name == "hv-1")) == NodeState.READY
