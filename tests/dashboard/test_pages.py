"""The HTML pages: what they list, untrusted text escaped, non-ASCII intact."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient
from markupsafe import escape
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.models import BuildStep, OfflineCause
from runners import pool


def page(client: FlaskClient, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, response.status
    assert response.mimetype == "text/html"
    assert response.mimetype_params["charset"] == "utf-8"
    return response.get_data(as_text=True)


def test_status_lists_queued_running_and_recent(client: FlaskClient, world: Any) -> None:
    html = page(client, "/")
    queued, rest = html.split("<h2>Queued", 1)[1].split("<h2>Recent", 1)
    running = html.split("<h2>Running", 1)[1].split("<h2>Queued", 1)[0]
    assert f'data-build-id="{world.queued_id}"' in queued
    assert escape(world.NOVA_SUBJECT) in queued and "comment: recheck" in queued
    assert f'data-build-id="{world.running_id}"' in running
    # the running build shows its current step and where it runs
    assert "stack.sh" in running and "devstack-1" in running
    assert f'data-build-id="{world.finished_id}"' in rest
    assert "state-failed" in rest and "1001,1" in rest
    assert "openstack/compute-hyperv" in rest
    # the finished build's logs link into our own /logs/ view
    assert f'href="/logs/1001/1/{world.finished_id}/"' in rest
    assert 'data-refresh="/?fragment=1"' in html


def test_untrusted_text_is_escaped_and_unicode_intact(client: FlaskClient, world: Any) -> None:
    html = page(client, "/")
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in html
    assert "修复 Hyper-V 实例名" in html and world.OWNER in html
    assert "Zoë &lt;b&gt;Ødegård&lt;/b&gt;" in html
    # scripts come only from our own origin
    assert "script-src" not in html
    assert client.get("/").headers["Content-Security-Policy"].startswith("default-src 'self'")


def test_status_fragment_is_only_the_tables(client: FlaskClient, world: Any) -> None:
    html = page(client, "/?fragment=1")
    assert "<html" not in html and "<h2>Running" in html
    assert f'data-build-id="{world.running_id}"' in html


def test_build_page_shows_steps_tests_and_report(client: FlaskClient, world: Any) -> None:
    html = page(client, f"/builds/{world.finished_id}")
    assert escape(world.SUBJECT) in html
    # steps: state, node, exit code and a link to each log file
    assert "prepare" in html and "tempest" in html and "devstack-1" in html
    assert f'href="/logs/1001/1/{world.finished_id}/01-prepare.log"' in html
    assert f'href="/logs/1001/1/{world.finished_id}/02-tempest.log.gz"' in html
    assert '<td class="step-exit">1</td>' in html
    assert "tempest: 1 test failed" in html
    # tempest counts, failures first with their text
    counts = html.index("fail: 1"), html.index("success: 1"), html.index("skip: 1")
    assert counts == tuple(sorted(counts))
    failures = html.split("<h3>Failures</h3>", 1)[1].split("</ul>", 1)[0]
    assert escape("tempest.api.compute.test_名前[id-1,<smoke>]") in failures
    assert escape(world.FAIL_DETAILS) in failures
    assert "test_ok" not in failures
    # the report, as text
    assert "Verified -1" in html
    assert "构建失败 &lt;em&gt;not html&lt;/em&gt;" in html
    # a finished build is not aborted; its patchset is outdated, so the recheck is on ps 2
    assert "/abort" not in html and "/recheck" not in html
    assert "Patchset 2 is current" in html and 'href="/changes/1001"' in html
    assert 'data-live="0"' in html


def test_running_build_page_is_live(client: FlaskClient, world: Any) -> None:
    html = page(client, f"/builds/{world.running_id}")
    assert 'data-live="1"' in html
    assert f'data-api="/api/builds/{world.running_id}"' in html
    assert f'<pre class="tail" data-tail-for="{world.running_step_id}">' in html
    assert "starting nova-compute 开始" in html
    assert f"/builds/{world.running_id}/abort" in html
    assert "Nothing reported yet." in html and "No test results." in html


def test_step_output_is_escaped(client: FlaskClient, world: Any,
                                dash_sessions: sessionmaker[Session]) -> None:
    with dash_sessions() as s, s.begin():
        s.get(BuildStep, world.running_step_id).output_tail = "<img src=x onerror=alert(1)>"
    html = page(client, f"/builds/{world.running_id}")
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_change_page_lists_patchsets_and_builds(client: FlaskClient, world: Any) -> None:
    html = page(client, "/changes/1001")
    assert escape(world.SUBJECT) in html and world.OWNER in html
    ps2, ps1 = html.split('data-patchset="2"', 1)[1].split('data-patchset="1"', 1)
    assert f'data-build-id="{world.running_id}"' in ps2
    assert f'data-build-id="{world.finished_id}"' in ps1
    assert "/changes/1001/2/recheck" in ps2 and "/recheck" not in ps1  # only the current one
    assert "compute_hyperv/nova/vmops.py" in ps1
    assert 'href="https://review.example.org/1001"' in html


def test_nodes_page(client: FlaskClient, world: Any) -> None:
    html = page(client, "/nodes")
    for name in ("devstack-1", "hv-1", "hv-2"):
        assert f'data-node="{name}"' in html
    hv2 = html.split('data-node="hv-2"', 1)[1].split("</tr>", 1)[0]
    assert "drained" in hv2 and "/nodes/hv-2/undrain" in hv2 and "state-offline" in hv2
    assert "3 failed: WinRM: connection refused &lt;x&gt;" in hv2
    assert 'action="/nodes/hv-2/enable"' in hv2 and ">Enable</button>" in hv2
    devstack = html.split('data-node="devstack-1"', 1)[1].split("</tr>", 1)[0]
    assert f'href="/builds/{world.running_id}"' in devstack
    assert "/nodes/devstack-1/drain" in devstack
    # Only offline nodes can be enabled.
    assert html.count(">Enable</button>") == 1 and "/nodes/devstack-1/enable" not in html


def test_nodes_page_shows_why_a_node_is_offline(client: FlaskClient, world: Any,
                                               dash_sessions: sessionmaker[Session]) -> None:
    with dash_sessions() as s, s.begin():
        pool.mark_offline(s, "hv-1", "worker w-1 lost during build 7",
                          cause=OfflineCause.WORKER_LOST)
    html = page(client, "/nodes")
    hv1 = html.split('data-node="hv-1"', 1)[1].split("</tr>", 1)[0]
    assert "worker-lost" in hv1 and 'action="/nodes/hv-1/enable"' in hv1


def test_empty_pages(client: FlaskClient) -> None:
    assert "The queue is empty." in page(client, "/")
    assert "No nodes in the pool." in page(client, "/nodes")


def test_unknown_things_are_404(client: FlaskClient, world: Any) -> None:
    for path in ("/builds/999999", "/changes/424242", "/builds/abc", "/nope"):
        assert client.get(path).status_code == 404, path


def test_javascript_change_url_is_not_a_link(client: FlaskClient,
                                             dash_sessions: sessionmaker[Session]) -> None:
    with dash_sessions() as s, s.begin():
        ps = queue.upsert_patchset(s, queue.ChangeInfo(
            number=7, project="openstack/nova", branch="master", patchset=1,
            url="javascript:alert(1)"))
        queue.enqueue(s, ps, "hyperv-local", "manual")
    html = page(client, "/changes/7")
    assert "javascript:" not in html and 'href="#"' in html


def test_status_shows_events_the_scheduler_gave_up_on(
        client: FlaskClient, world: Any, dash_sessions: sessionmaker[Session]) -> None:
    from ci.db import transaction
    from ci.models import Event, utcnow

    assert "Events given up on" not in page(client, "/")
    with transaction(dash_sessions) as session:
        session.add(Event(type="comment-added", raw="{}", processed_at=utcnow(),
                          failed_at=utcnow(),
                          outcome="failed: Gerrit lookup failed: <b>change 7</b> 不存在"))
    html = page(client, "/")
    assert "Events given up on" in html and "events list --failed" in html
    assert "&lt;b&gt;change 7&lt;/b&gt; 不存在" in html


def test_build_page_lists_flaky_tests_apart(client: FlaskClient, world: Any,
                                            dash_sessions: sessionmaker[Session]) -> None:
    from ci.models import TestResult

    with dash_sessions() as s, s.begin():
        s.add(TestResult(build_id=world.finished_id, test_id="tempest.api.T.test_flaky_实例",
                         status="flaky", duration=3.0,
                         details="passed when re-run (re-run 1); failed first with:\nTimeout"))
    html = page(client, f"/builds/{world.finished_id}")
    flaky = html.split("<h3>Flaky</h3>", 1)[1].split("</ul>", 1)[0]
    assert "tempest.api.T.test_flaky_实例" in flaky and "failed first with:" in flaky
    failures = html.split("<h3>Failures</h3>", 1)[1].split("</ul>", 1)[0]
    assert "test_flaky" not in failures  # not a failure
    assert "flaky: 1" in html and html.index("fail: 1") < html.index("flaky: 1") < html.index(
        "success: 1")
