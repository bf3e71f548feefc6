"""The JSON API, on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

BUILD_KEYS = {
    "id", "job", "state", "change", "patchset", "project", "subject", "owner", "reason",
    "created", "started", "finished", "duration", "log_url", "summary",
}


@pytest.fixture
def dash_sessions(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """Overrides the conftest's SQLite-only database: these run on both engines."""
    return sessions


def get_json(client: FlaskClient, path: str) -> Any:
    response = client.get(path)
    assert response.status_code == 200, response.status
    assert response.mimetype == "application/json"
    # UTF-8 on the wire, not \\u escapes
    assert "实例名".encode() in response.data
    return response.get_json()


def test_status_shape(client: FlaskClient, world: Any) -> None:
    body = get_json(client, "/api/status")
    assert set(body) == {"queued", "running", "recent", "nodes", "events", "stream_error"}
    assert body["events"] == {"pending": 0, "failed": []}
    assert body["stream_error"] is None  # Gerrit has not refused the listener
    assert [b["id"] for b in body["queued"]] == [world.queued_id]
    assert [b["id"] for b in body["running"]] == [world.running_id]
    assert [b["id"] for b in body["recent"]] == [world.finished_id]

    queued = body["queued"][0]
    assert set(queued) >= BUILD_KEYS
    assert queued["subject"] == world.NOVA_SUBJECT and queued["owner"] == world.NOVA_OWNER
    assert queued["state"] == "queued" and queued["reason"] == "comment: recheck"
    assert queued["started"] is None and queued["duration"] is None

    running = body["running"][0]
    assert running["current_step"] == "stack.sh"
    assert running["current_step_node"] == "devstack-1"
    assert (running["change"], running["patchset"]) == (1001, 2)
    assert running["duration"] >= 0

    recent = body["recent"][0]
    assert recent["subject"] == world.SUBJECT and recent["owner"] == world.OWNER
    assert recent["state"] == "failed" and recent["summary"] == "1 test failed"
    assert recent["project"] == "openstack/compute-hyperv"
    assert recent["log_url"] == f"/logs/1001/1/{world.finished_id}/"
    finished = datetime.fromisoformat(recent["finished"])
    assert finished.utcoffset() is not None
    assert finished >= datetime.fromisoformat(recent["started"])

    nodes = {n["name"]: n for n in body["nodes"]}
    assert set(nodes) == {"devstack-1", "hv-1", "hv-2"}
    assert nodes["devstack-1"]["build_id"] == world.running_id


def test_build_shape(client: FlaskClient, world: Any) -> None:
    body = get_json(client, f"/api/builds/{world.finished_id}")
    assert set(body) >= BUILD_KEYS
    assert [s["name"] for s in body["steps"]] == ["prepare", "tempest"]
    tempest = body["steps"][1]
    assert tempest["state"] == "failed" and tempest["exit_code"] == 1
    assert tempest["node"] == "devstack-1"
    assert tempest["log_url"] == f"/logs/1001/1/{world.finished_id}/02-tempest.log.gz"
    assert tempest["duration"] == 158.0
    assert body["test_counts"] == {"fail": 1, "success": 1, "skip": 1}
    assert list(body["test_counts"]) == ["fail", "success", "skip"]
    first = body["tests"][0]
    assert first["status"] == "fail" and first["failed"] is True
    assert first["test_id"] == "tempest.api.compute.test_名前[id-1,<smoke>]"
    assert first["details"] == world.FAIL_DETAILS
    assert body["report"]["vote"] == -1 and body["report"]["state"] == "pending"
    assert body["report"]["message"] == "Build failed. 构建失败 <em>not html</em>"


def test_running_build_has_live_tail(client: FlaskClient, world: Any) -> None:
    body = client.get(f"/api/builds/{world.running_id}").get_json()
    live = body["steps"][-1]
    assert live["id"] == world.running_step_id and live["state"] == "running"
    assert live["output_tail"].endswith("starting nova-compute 开始\n")
    assert live["finished"] is None and live["exit_code"] is None
    # logs are not published yet: no link to a file that is not served
    assert body["log_url"] is None and live["log_url"] is None
    assert body["tests"] == [] and body["test_counts"] == {} and body["report"] is None


def test_nodes(client: FlaskClient, world: Any) -> None:
    body = client.get("/api/nodes").get_json()
    hv2 = next(n for n in body["nodes"] if n["name"] == "hv-2")
    assert hv2 == {**hv2, "label": "hyperv", "state": "offline", "drained": True,
                   "health_failures": 3, "message": "WinRM: connection refused <x>"}


def test_unknown_build_is_json_404(client: FlaskClient) -> None:
    response = client.get("/api/builds/31337")
    assert response.status_code == 404
    assert response.get_json() == {"error": "no build 31337"}
