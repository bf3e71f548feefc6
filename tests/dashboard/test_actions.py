"""POST actions: abort, recheck, drain/undrain, enable, and the CSRF check on each."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci.models import Build, BuildState, Node, NodeState

Csrf = Callable[[str], str]

# Actions need a logged-in operator (tests/dashboard/test_auth_actions.py: refused without).
pytestmark = pytest.mark.usefixtures("logged_in")


def flashes(client: FlaskClient, path: str) -> str:
    return client.get(path).get_data(as_text=True).split('<ul class="flashes">', 1)[-1]


def test_abort_running_build(client: FlaskClient, world: Any, csrf: Csrf,
                             dash_sessions: sessionmaker[Session]) -> None:
    page = f"/builds/{world.running_id}"
    response = client.post(f"{page}/abort", data={"csrf_token": csrf(page), "next": page})
    assert response.status_code == 303 and response.headers["Location"] == page
    with dash_sessions() as s:
        build = s.get(Build, world.running_id)
        assert build.state == BuildState.ABORTED and build.abort_requested
        assert build.summary == "aborted from the dashboard by opérateur Zoë"
    assert f"Build {world.running_id} aborted." in flashes(client, page)


def test_abort_finished_build_changes_nothing(client: FlaskClient, world: Any, csrf: Csrf,
                                             dash_sessions: sessionmaker[Session]) -> None:
    page = f"/builds/{world.finished_id}"
    # The finished build's page has no form (nothing to abort, an outdated patchset to
    # recheck): the session's token comes from another page, as a stale tab would hold it.
    response = client.post(f"{page}/abort", data={"csrf_token": csrf("/changes/1001")})
    assert response.status_code == 303 and response.headers["Location"] == page
    with dash_sessions() as s:
        assert s.get(Build, world.finished_id).state == BuildState.FAILED
    assert "had already finished" in flashes(client, page)


def test_recheck_queues_the_projects_jobs(client: FlaskClient, world: Any, csrf: Csrf,
                                          dash_sessions: sessionmaker[Session]) -> None:
    token = csrf("/changes/1001")
    response = client.post("/changes/1001/1/recheck", data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"] == "/changes/1001"
    with dash_sessions() as s:
        # Patchset 2 is current: a recheck of patchset 1 queues nothing and votes nothing.
        assert s.scalars(select(Build).where(Build.reason == "manual recheck")).all() == []
    text = flashes(client, "/changes/1001")
    assert ("Not queued (already queued, or 1001,1 is not the current patchset): "
            "hyperv-local, hyperv-extra.") in text
    token = csrf("/changes/1001")
    client.post("/changes/1001/2/recheck", data={"csrf_token": token})
    with dash_sessions() as s:
        queued = s.scalars(select(Build).where(Build.reason == "manual recheck")
                           .order_by(Build.id)).all()
        assert [(b.job, b.patchset.number, b.state) for b in queued] == [
            ("hyperv-local", 2, BuildState.QUEUED), ("hyperv-extra", 2, BuildState.QUEUED)]
    assert f"Queued hyperv-local (build {queued[0].id}), hyperv-extra" in flashes(
        client, "/changes/1001")


def test_recheck_twice_queues_once(client: FlaskClient, world: Any, csrf: Csrf,
                                   dash_sessions: sessionmaker[Session]) -> None:
    token = csrf("/changes/1002")
    for _ in range(2):
        assert client.post("/changes/1002/1/recheck", data={"csrf_token": token}).status_code == 303
    with dash_sessions() as s:
        assert s.scalars(select(Build.id).where(Build.state == BuildState.QUEUED)).all() == [
            world.queued_id]


def test_recheck_unknown_patchset_is_404(client: FlaskClient, world: Any, csrf: Csrf) -> None:
    token = csrf("/changes/1001")
    assert client.post("/changes/1001/9/recheck", data={"csrf_token": token}).status_code == 404


def test_drain_and_undrain(client: FlaskClient, world: Any, csrf: Csrf,
                           dash_sessions: sessionmaker[Session]) -> None:
    token = csrf("/nodes")

    def drained(name: str) -> bool:
        with dash_sessions() as s:
            return s.scalar(select(Node.drained).where(Node.name == name))

    response = client.post("/nodes/hv-1/drain", data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"] == "/nodes"
    assert drained("hv-1")
    assert "Node hv-1 drained." in flashes(client, "/nodes")
    client.post("/nodes/hv-1/undrain", data={"csrf_token": token})
    assert not drained("hv-1")
    assert client.post("/nodes/nope/drain", data={"csrf_token": token}).status_code == 404


def test_enable_an_offline_node(client: FlaskClient, world: Any, csrf: Csrf,
                               dash_sessions: sessionmaker[Session]) -> None:
    token = csrf("/nodes")

    def row(name: str) -> tuple[Any, ...]:
        with dash_sessions() as s:
            node = s.scalar(select(Node).where(Node.name == name))
            return (node.state, node.offline_cause, node.health_failures, node.build_id,
                    node.message, node.drained)

    response = client.post("/nodes/hv-2/enable", data={"csrf_token": token, "next": "/nodes"})
    assert response.status_code == 303 and response.headers["Location"] == "/nodes"
    # Not enabled yet: a worker's keeper cleans and checks it first, as `nodes enable`
    # does (test_auth_actions.py). Enabling is not undraining either.
    assert row("hv-2") == (NodeState.OFFLINE, "enable-requested", 3, None,
                           "enable requested by opérateur Zoë: waiting for a worker to "
                           "clean and check it", True)
    assert "Node hv-2: a worker will clean and health-check it" in flashes(client, "/nodes")

    response = client.post("/nodes/devstack-1/enable", data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"] == "/nodes"
    assert row("devstack-1") == (NodeState.RESERVED, None, 0, world.running_id, "", False)
    assert "Node devstack-1 not enabled: node &#39;devstack-1&#39; holds build" in flashes(
        client, "/nodes")
    assert client.post("/nodes/nope/enable", data={"csrf_token": token}).status_code == 404


def test_missing_or_wrong_csrf_is_400(client: FlaskClient, world: Any, csrf: Csrf,
                                      dash_sessions: sessionmaker[Session]) -> None:
    posts = [f"/builds/{world.running_id}/abort", "/changes/1001/2/recheck", "/nodes/hv-1/drain",
             "/nodes/hv-2/enable"]
    for path in posts:
        assert client.post(path).status_code == 400, path
    csrf("/nodes")  # the session now has a token, but a forged form does not carry it
    for path in posts:
        for forged in ("forged", "forgé 伪造"):
            assert client.post(path, data={"csrf_token": forged}).status_code == 400, path
    with dash_sessions() as s:
        assert s.get(Build, world.running_id).state == BuildState.RUNNING
        assert s.scalar(select(Build.id).where(Build.reason == "manual recheck")) is None
        assert not s.scalar(select(Node.drained).where(Node.name == "hv-1"))
        assert s.scalar(select(Node.state).where(Node.name == "hv-2")) == NodeState.OFFLINE


def test_token_of_another_session_is_refused(app: Any, world: Any, csrf: Csrf,
                                            logged_in: str) -> None:
    stolen = csrf("/nodes")
    other = app.test_client()
    with other.session_transaction() as other_session:  # logged in too, in its own session
        other_session["user"] = logged_in
    other.get("/nodes")
    assert other.post("/nodes/hv-1/drain", data={"csrf_token": stolen}).status_code == 400


def test_next_must_be_local(client: FlaskClient, world: Any, csrf: Csrf) -> None:
    token = csrf("/nodes")
    for target in ("https://evil.example/", "//evil.example/x", "javascript:alert(1)"):
        response = client.post("/nodes/hv-1/drain", data={"csrf_token": token, "next": target})
        assert response.headers["Location"] == "/nodes", target


def test_actions_need_post(client: FlaskClient, world: Any) -> None:
    assert client.get(f"/builds/{world.running_id}/abort").status_code == 405
