"""dashboard/metrics.py: `/metrics` parses as Prometheus text (and OpenMetrics), its
values match the database, on SQLite and PostgreSQL, in a fixed number of queries."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from ci import queue, stream_status
from ci.config import Config
from ci.db import make_engine, make_sessionmaker
from ci.models import (
    Build,
    BuildState,
    Event,
    Node,
    NodeState,
    OfflineCause,
    Report,
    ReportState,
    utcnow,
)
from dashboard import create_app, metrics
from dashboard.metrics import MESSAGE_ELSEWHERE, message_label, read_snapshot
from tests.dashboard.conftest import World

REFUSAL = "gerrit.known_hosts: the host key of review.example.org:29418 does not match"
# One scrape: five SELECTs, plus the transaction's first statement (SQLite's
# BEGIN IMMEDIATE, PostgreSQL's SET TRANSACTION). Rows never add queries.
MAX_STATEMENTS = 6
# Prometheus' data model (prometheus.io/docs/concepts/data_model): names an
# exporter uses, without the colons reserved for recording rules.
METRIC_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@pytest.fixture
def dash_sessions(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """Overrides the conftest's SQLite-only database: these run on both engines."""
    return sessions


@dataclass(frozen=True)
class Extras:
    """What `extras` added to the world, for the assertions to compare with."""

    now: datetime
    refused_at: datetime


@pytest.fixture
def extras(world: World, dash_sessions: sessionmaker[Session]) -> Extras:
    """The world plus timed builds, a report in each state, events (one failed),
    recovering and dirty nodes, and Gerrit refusing the stream."""
    now = utcnow()
    refused_at = now - timedelta(minutes=7)
    with dash_sessions() as s, s.begin():
        ps = queue.upsert_patchset(s, queue.ChangeInfo(
            number=1003, project="openstack/compute-hyperv", branch="master", patchset=1,
            subject="Ünïcode <b>subject</b>"))

        def build(job: str, state: BuildState, seconds: float | None) -> int:
            start = None if seconds is None else now - timedelta(hours=5)
            end = now if start is None or seconds is None else start + timedelta(seconds=seconds)
            row = Build(patchset_id=ps.id, job=job, state=state, started_at=start,
                        finished_at=end)
            s.add(row)
            s.flush()
            return row.id

        quick = build("hyperv-extra", BuildState.SUCCEEDED, 45)
        slow = build("hyperv-extra", BuildState.SUCCEEDED, 4000)
        broken = build("hyperv-extra", BuildState.ERROR, 30)
        aborted = build("hyperv-extra", BuildState.ABORTED, None)  # never started
        superseded = build("hyperv-extra", BuildState.SUPERSEDED, None)

        def report(build_id: int, state: ReportState, next_attempt: datetime) -> None:
            s.add(Report(build_id=build_id, project="openstack/compute-hyperv",
                         change_number=1003, patchset_number=1, message="m", state=state,
                         next_attempt_at=next_attempt))

        report(quick, ReportState.SENT, now)
        report(slow, ReportState.FAILED, now)
        report(broken, ReportState.LABEL_REFUSED, now)
        report(aborted, ReportState.NOT_SENT, now)
        report(superseded, ReportState.PENDING, now + timedelta(hours=1))  # not due yet
        # The world's own pending report (build finished_id) is due: one minute late.
        world_report = s.query(Report).filter_by(build_id=world.finished_id).one()
        world_report.next_attempt_at = now - timedelta(minutes=1)

        s.add_all([
            Event(type="patchset-created", raw="{}", received_at=now - timedelta(minutes=10),
                  processed_at=now, outcome="built"),
            Event(type="comment-added", raw="{}", received_at=now - timedelta(minutes=5),
                  processed_at=now, failed_at=now, outcome="failed: no such patch set"),
            Event(type="comment-added", raw="{}", received_at=now - timedelta(minutes=2)),
            Node(name="hv-3", label="hyperv", state=NodeState.CLEANING,
                 offline_cause=OfflineCause.WORKER_LOST),
            Node(name="hv-4", label="hyperv", state=NodeState.OFFLINE,
                 offline_cause=OfflineCause.CLEANUP_FAILED),
        ])
        stream_status.record(s, REFUSAL, at=refused_at)
    return Extras(now=now, refused_at=refused_at)


def scrape(client: FlaskClient, accept: str | None = None) -> dict[str, Metric]:
    headers = {"Accept": accept} if accept else {}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    text = response.get_data(as_text=True)
    parse = openmetrics_families if accept else text_string_to_metric_families
    return {family.name: family for family in parse(text)}


def value(found: dict[str, Metric], sample: str, **labels: str) -> float:
    """The value of the one sample named `sample` whose labels include `labels`."""
    family = sample.removesuffix("_total").removesuffix("_bucket").removesuffix(
        "_count").removesuffix("_sum")
    assert family in found, f"no metric family {family}"
    hits = [s.value for s in found[family].samples if s.name == sample
            and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, f"{sample}{labels}: {len(hits)} samples"
    return hits[0]


def test_values_match_the_database(client: FlaskClient, extras: Extras) -> None:
    m = scrape(client)
    assert m["hypervci_builds"].type == "gauge"
    assert value(m, "hypervci_builds", job="hyperv-local", state="queued", result="") == 1
    assert value(m, "hypervci_builds", job="hyperv-local", state="running", result="") == 1
    assert value(m, "hypervci_builds", job="hyperv-local", state="finished",
                 result="failed") == 1
    assert value(m, "hypervci_builds", job="hyperv-extra", state="finished",
                 result="succeeded") == 2
    assert value(m, "hypervci_builds", job="hyperv-extra", state="finished",
                 result="superseded") == 1
    # A configured job's series exist before its first build of that kind.
    assert value(m, "hypervci_builds", job="hyperv-extra", state="queued", result="") == 0
    assert value(m, "hypervci_queue_length") == 1

    histogram = m["hypervci_build_duration_seconds"]
    assert histogram.type == "histogram"
    ok = {"job": "hyperv-extra", "result": "succeeded"}
    assert value(m, "hypervci_build_duration_seconds_bucket", **ok, le="30.0") == 0
    assert value(m, "hypervci_build_duration_seconds_bucket", **ok, le="60.0") == 1
    assert value(m, "hypervci_build_duration_seconds_bucket", **ok, le="3600.0") == 1
    assert value(m, "hypervci_build_duration_seconds_bucket", **ok, le="5400.0") == 2
    assert value(m, "hypervci_build_duration_seconds_bucket", **ok, le="+Inf") == 2
    assert value(m, "hypervci_build_duration_seconds_count", **ok) == 2
    assert value(m, "hypervci_build_duration_seconds_sum", **ok) == pytest.approx(4045, abs=0.01)
    assert value(m, "hypervci_build_duration_seconds_count", job="hyperv-extra",
                 result="error") == 1
    # Builds that never started (aborted, superseded in the queue) have no run time.
    results = {s.labels["result"] for s in histogram.samples}
    assert results == {"succeeded", "error", "failed"}

    assert value(m, "hypervci_nodes", label="devstack", state="reserved", cause="") == 1
    assert value(m, "hypervci_nodes", label="hyperv", state="ready", cause="") == 1
    assert value(m, "hypervci_nodes", label="hyperv", state="cleaning",
                 cause="worker-lost") == 1
    assert value(m, "hypervci_nodes", label="hyperv", state="offline",
                 cause="cleanup-failed") == 1
    assert value(m, "hypervci_nodes", label="hyperv", state="offline", cause="") == 1  # hv-2
    assert value(m, "hypervci_nodes", label="devstack", state="offline",
                 cause="health-check") == 0
    assert value(m, "hypervci_nodes_drained", label="hyperv") == 1

    assert m["hypervci_events_stored"].type == "counter"
    assert value(m, "hypervci_events_stored_total") == 3
    assert value(m, "hypervci_events_failed_total") == 1
    assert value(m, "hypervci_events_pending") == 1
    assert value(m, "hypervci_listener_lag_seconds") >= 120  # newest event: 2 min old

    assert value(m, "hypervci_gerrit_stream_error", message=REFUSAL) == 1
    assert value(m, "hypervci_gerrit_stream_error_timestamp_seconds") == pytest.approx(
        extras.refused_at.timestamp())

    for state in ("sent", "failed", "label-refused", "not-sent"):
        assert value(m, "hypervci_reports", state=state) == 1, state
    assert value(m, "hypervci_reports", state="pending") == 2
    assert value(m, "hypervci_report_backlog") == 1  # the other pending one is not due
    assert value(m, "hypervci_report_overdue_seconds") >= 60

    # The process' own counters ride along (an idle dashboard's CPU, its memory).
    assert value(m, "process_cpu_seconds_total") >= 0


def test_snapshot_at_a_fixed_time(dash_sessions: sessionmaker[Session],
                                  extras: Extras) -> None:
    """The time-based values, exactly, with the clock given."""
    now = extras.now + timedelta(seconds=30)
    with dash_sessions() as s, s.begin():
        snap = read_snapshot(s, now=now)
    m = {f.name: f for f in metrics.families(snap, ["hyperv-local", "hyperv-extra"])}
    assert value(m, "hypervci_listener_lag_seconds") == pytest.approx(150, abs=0.01)
    assert value(m, "hypervci_report_overdue_seconds") == pytest.approx(90, abs=0.01)


def test_quiet_database(client: FlaskClient) -> None:
    """Nothing stored yet: zeros, no stream error, and no lag (there is no event to be behind)."""
    m = scrape(client)
    assert value(m, "hypervci_gerrit_stream_error", message="") == 0
    assert "hypervci_gerrit_stream_error_timestamp_seconds" not in m
    assert "hypervci_listener_lag_seconds" not in m
    assert value(m, "hypervci_events_stored_total") == 0
    assert value(m, "hypervci_report_backlog") == 0
    assert value(m, "hypervci_report_overdue_seconds") == 0
    assert value(m, "hypervci_builds", job="hyperv-local", state="finished",
                 result="succeeded") == 0
    assert m["hypervci_build_duration_seconds"].samples == []


def test_long_stream_error_is_not_a_label(client: FlaskClient,
                                          dash_sessions: sessionmaker[Session]) -> None:
    with dash_sessions() as s, s.begin():
        stream_status.record(s, "refused:\n" + "x" * 500)
    assert value(scrape(client), "hypervci_gerrit_stream_error",
                 message=MESSAGE_ELSEWHERE) == 1


def test_message_label() -> None:
    assert message_label("host key mismatch — 主机") == "host key mismatch — 主机"
    assert message_label("a\nb") == MESSAGE_ELSEWHERE
    assert message_label("x" * 201) == MESSAGE_ELSEWHERE


def test_names_and_label_values(client: FlaskClient, extras: Extras) -> None:
    """Valid Prometheus names; label values never carry Gerrit text."""
    m = scrape(client)
    for family in m.values():
        assert METRIC_NAME.fullmatch(family.name), family.name
        if family.name.startswith("hypervci_"):
            assert family.documentation, family.name
        for sample in family.samples:
            for name, label in sample.labels.items():
                assert LABEL_NAME.fullmatch(name) and not name.startswith("__"), name
                for gerrit_text in (World.SUBJECT, World.OWNER, "Ünïcode"):
                    assert gerrit_text not in label


def test_openmetrics_when_asked(client: FlaskClient, extras: Extras) -> None:
    """What a Prometheus server asks for first; the same values in the other format."""
    m = scrape(client, accept="application/openmetrics-text; version=1.0.0")
    assert value(m, "hypervci_events_failed_total") == 1
    assert value(m, "hypervci_gerrit_stream_error", message=REFUSAL) == 1


@pytest.fixture
def statements(dash_sessions: sessionmaker[Session]) -> Iterator[list[str]]:
    """Every SQL statement the app's engine runs while the test does."""
    engine = dash_sessions.kw["bind"]
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    yield seen
    event.remove(engine, "before_cursor_execute", note)


def test_a_fixed_number_of_queries(client: FlaskClient, extras: Extras,
                                   dash_sessions: sessionmaker[Session],
                                   statements: list[str]) -> None:
    scrape(client)
    first = len(statements)
    assert first <= MAX_STATEMENTS, statements
    if dash_sessions.kw["bind"].dialect.name == "postgresql":
        # Every query of the scrape reads one snapshot, and none may write.
        assert statements[0] == "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
    with dash_sessions() as s, s.begin():  # ten times the rows: no more queries
        ps = queue.upsert_patchset(s, queue.ChangeInfo(
            number=1004, project="openstack/nova", branch="stable/2023.1", patchset=1))
        for n in range(30):
            s.add(Build(patchset_id=ps.id, job=f"job-{n % 3}", state=BuildState.FAILED,
                        started_at=utcnow(), finished_at=utcnow()))
            s.add(Node(name=f"extra-{n}", label=f"pool-{n % 4}"))
            s.add(Event(type="ref-updated", raw="{}"))
    statements.clear()
    scrape(client)
    assert len(statements) == first, statements


def test_database_down_is_503(dash_config: Config) -> None:
    url = "postgresql+psycopg://hypervci@127.0.0.1:1/hypervci"  # nothing listens on 1
    app = create_app(dash_config, sessions=make_sessionmaker(make_engine(url)),
                     test_config={"TESTING": True})
    response = app.test_client().get("/metrics")
    assert response.status_code == 503
    body = response.get_data(as_text=True)
    assert body.startswith("database unavailable (OperationalError)")
    assert "127.0.0.1" not in body
