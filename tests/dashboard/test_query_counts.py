"""SQL statements per page: a fixed small number, whatever the number of rows shown.

Every statement the app runs for one request is counted on the engine
(`before_cursor_execute`); the world is grown first so that a per-row lazy
load (an N+1) would show as dozens of statements.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.models import BuildState, BuildStep, Node, StepState, TestResult, utcnow
from tests.sql_statements import sent_statements

# Statements per page; the world below lists 20+ builds on each of them.
LIMITS = {
    "/": 11,
    "/?fragment=1": 11,
    "/api/status": 11,
    "/nodes": 5,
    "/api/nodes": 4,
    "/builds/{running}": 16,
    "/builds/{finished}": 16,
    "/api/builds/{finished}": 12,
    "/builds/{queued}": 17,
    "/changes/1001": 10,
    "/logs/1001/1/{finished}/": 4,  # the build banner: one indexed lookup by log_path
}


@pytest.fixture
def crowd(world: Any, dash_sessions: sessionmaker[Session]) -> dict[str, int]:
    """25 more changes: queued, running (with steps) and finished builds, and nodes."""
    with dash_sessions() as s, s.begin():
        for n in range(25):
            ps = queue.upsert_patchset(s, queue.ChangeInfo(
                number=2000 + n, project="openstack/compute-hyperv", branch="master",
                patchset=1, subject=f"change {n} 变更", owner_name="Zoë"))
            build = queue.enqueue(s, ps, "hyperv-local", "patchset-created")
            assert build is not None
            if n % 3 == 1:
                build.state, build.started_at = BuildState.RUNNING, utcnow()
                s.add(BuildStep(build_id=build.id, name="tempest", state=StepState.RUNNING,
                                tests_done=n, tests_passed=n, tests_failed=0))
            elif n % 3 == 2:
                build.state = BuildState.FAILED
                build.started_at = utcnow() - timedelta(minutes=n + 5)
                build.finished_at = utcnow()
            s.add(TestResult(build_id=world.finished_id, test_id=f"tempest.t{n}",
                             status="fail" if n % 2 else "success", details="tb"))
        for n in range(10):
            s.add(Node(name=f"hv-x{n}", label="hyperv", lab_set=f"set-{n % 3}"))
    return {"running": world.running_id, "finished": world.finished_id,
            "queued": world.queued_id}


def test_statements_per_page(client: FlaskClient, crowd: dict[str, int],
                             dash_sessions: sessionmaker[Session]) -> None:
    # One world for every page (it takes longer to make than to read).
    over = []
    for path, limit in LIMITS.items():
        url = path.format(**crowd)
        client.get(url)  # the first request may warm caches; count the second
        with sent_statements(dash_sessions.kw["bind"]) as statements:
            response = client.get(url)
        assert response.status_code == 200, url
        if len(statements) > limit:
            over.append(f"{url}: {len(statements)} statements (limit {limit}):\n  "
                        + "\n  ".join(s.split("\n")[0][:120] for s in statements))
    assert not over, "\n".join(over)
