"""Why a queued build waits and how long a running one has left (dashboard/live.py),
and the status page that shows both."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.models import Build, BuildState, BuildStep, Node, NodeState, utcnow
from dashboard.live import (
    CLAIM_SCAN,
    PoolNode,
    QueuedBuild,
    eta,
    median_duration,
    queue_waits,
)
from dashboard.polish import ago

LAB = ("devstack", "hyperv", "hyperv")


def pool(*nodes: PoolNode) -> list[PoolNode]:
    return list(nodes)


def test_the_first_builds_whose_nodes_are_free_can_start_the_rest_say_what_is_missing() -> None:
    nodes = pool(PoolNode("ctl-1", "devstack", "ready"),
                 PoolNode("hv-1", "hyperv", "ready"),
                 PoolNode("hv-2", "hyperv", "ready"),
                 PoolNode("hv-3", "hyperv", "offline", offline_cause="health-check"),
                 PoolNode("hv-4", "hyperv", "ready", drained=True),
                 PoolNode("hv-5", "hyperv", "reserved", build_id=7))
    waits = queue_waits([QueuedBuild(10, LAB), QueuedBuild(11, LAB), QueuedBuild(12, ())],
                        nodes)
    assert waits[10].position == 1 and waits[10].can_start
    assert not waits[11].can_start and waits[11].position == 2
    # The controller went to build 10: that is what build 11 lacks first.
    assert waits[11].reason == ("no free devstack node (needs 1): "
                                "ctl-1 promised to an older queued build")
    assert waits[12].can_start and "needs no node" in waits[12].reason


def test_a_shortage_names_each_node_and_why_it_is_not_free() -> None:
    nodes = pool(PoolNode("ctl-1", "devstack", "ready"),
                 PoolNode("hv-1", "hyperv", "reserved", build_id=7),
                 PoolNode("hv-2", "hyperv", "offline", drained=True,
                          offline_cause="cleanup-failed"),
                 PoolNode("hv-3", "hyperv", "ready", drained=True))
    (wait,) = queue_waits([QueuedBuild(10, LAB)], nodes).values()
    assert wait.reason == ("no free hyperv node (needs 2): hv-1 busy (build #7), "
                           "hv-2 offline (cleanup-failed), drained, hv-3 drained")
    (small,) = queue_waits([QueuedBuild(10, LAB)], nodes[:2]).values()
    assert small.reason == "the pool has 1 hyperv node; the job needs 2"


def test_with_lab_sets_a_build_waits_for_a_whole_free_set() -> None:
    nodes = pool(PoolNode("ctl-a", "devstack", "reserved", build_id=3, lab_set="set-a"),
                 PoolNode("hv-a1", "hyperv", "ready", lab_set="set-a"),
                 PoolNode("hv-a2", "hyperv", "ready", lab_set="set-a"),
                 PoolNode("ctl-b", "devstack", "ready", lab_set="set-b"),
                 PoolNode("hv-b1", "hyperv", "ready", lab_set="set-b"),
                 PoolNode("hv-b2", "hyperv", "offline", lab_set="set-b",
                          offline_cause="health-check"))
    (wait,) = queue_waits([QueuedBuild(10, LAB)], nodes, by_lab_set=True).values()
    # Free hyperv nodes exist (hv-a1, hv-a2) but set-a serves build 3: no mixing sets.
    assert wait.reason == ("no free lab set: set-a busy (build #3); "
                           "set-b: hv-b2 offline (health-check)")
    healed = [n if n.name != "hv-b2" else PoolNode("hv-b2", "hyperv", "ready", lab_set="set-b")
              for n in nodes]
    waits = queue_waits([QueuedBuild(10, LAB), QueuedBuild(11, LAB)], healed, by_lab_set=True)
    assert waits[10].can_start
    assert waits[11].reason == ("no free lab set: set-a busy (build #3); "
                                "set-b busy (promised to an older queued build)")


def test_builds_past_the_claim_scan_wait_for_the_ones_ahead() -> None:
    nodes = pool(PoolNode("ctl-1", "devstack", "ready"))
    queued = [QueuedBuild(i, ("devstack",)) for i in range(CLAIM_SCAN + 2)]
    waits = queue_waits(queued, nodes)
    assert waits[0].can_start and not waits[1].can_start
    assert waits[CLAIM_SCAN + 1].position == CLAIM_SCAN + 2
    assert "behind the 20 oldest" in waits[CLAIM_SCAN + 1].reason


def test_eta_is_the_median_of_recent_builds_against_the_elapsed_time() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert median_duration([600, 3600, 1200]) == 1200
    assert median_duration([]) is None and eta(now, None, now) is None
    left = eta(now - timedelta(minutes=5), 1200, now)
    assert left is not None and left.remaining == 900 and left.text() == "about 15 min left"
    late = eta(now - timedelta(minutes=30), 1200, now)
    assert late is not None and late.text() == "10 min over the usual 20 min"


def test_relative_times() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def at(**delta: float) -> str:
        return (now - timedelta(**delta)).isoformat()

    assert ago(at(seconds=10), now) == "just now"
    assert ago(at(minutes=3), now) == "3 min ago"
    assert ago(at(hours=2), now) == "2 hours ago"
    assert ago(at(days=1), now) == "1 day ago"
    assert ago((now + timedelta(minutes=5)).isoformat(), now) == "in 5 min"
    assert ago(None) == ""


def test_status_shows_position_reason_eta_and_progress(
        client: FlaskClient, world: Any, dash_sessions: sessionmaker[Session]) -> None:
    with dash_sessions() as s, s.begin():
        # History for the ETA: two finished builds of the running build's job.
        running = s.get(Build, world.running_id)
        for minutes in (10, 30):
            done = queue.enqueue(s, running.patchset, "hyperv-extra", "patchset-created")
            assert done is not None
            done.state, done.started_at = BuildState.SUCCEEDED, utcnow() - timedelta(hours=2)
            done.finished_at = done.started_at + timedelta(minutes=minutes)
            done.job = running.job
        step = s.get(BuildStep, world.running_step_id)
        step.tests_done, step.tests_passed, step.tests_failed = 40, 38, 2
        step.current_test = "tempest.api.compute.test_实例<b>"
        s.add(Node(name="ctl-9", label="devstack", state=NodeState.OFFLINE,
                   offline_cause="health-check"))
    body = client.get("/api/status").get_json()
    (live,) = body["running"]
    # [the world's failed build (seconds), 10 min, 30 min]: the median is 10 min.
    assert live["eta"]["expected"] == 600.0 and "left" in live["eta"]["text"]
    assert live["progress"] == {"done": 40, "passed": 38, "failed": 2,
                                "current": "tempest.api.compute.test_实例<b>"}
    (queued,) = body["queued"]
    # A local job needs no node: only a worker is missing.
    assert queued["position"] == 1 and queued["can_start"] is True
    html = client.get("/").get_data(as_text=True)
    assert "about 1" in html and "40 tests done, 38 passed, 2 failed" in html
    assert "tempest.api.compute.test_实例&lt;b&gt;" in html
    assert '<td class="num position">1</td>' in html and "waits for a free worker" in html
    assert f'<time datetime="{queued["created"]}" title="' in html

