"""`/metrics`: the CI's state in Prometheus' text format, read from the database.

Nothing is counted in this process: a custom collector reads the shared
database at scrape time, in one short read transaction of a fixed handful of
aggregate queries (GROUP BY, no rows loaded one by one), so every dashboard
process answers the same and a restart loses nothing. The metric set and
what each means for an operator are in docs/metrics.md.

Naming follows Prometheus' data model and naming practice
(prometheus.io/docs/concepts/data_model, /docs/practices/naming): names
match `[a-zA-Z_][a-zA-Z0-9_]*` (no colons: those are for recording rules),
one `hypervci_` prefix, base units (`_seconds`), `_total` only on counters.
Label values come from bounded sets (configured job names, node labels, the
state and cause enums), never from Gerrit text: every distinct value is a new
time series.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, current_app, request
from flask.typing import ResponseReturnValue
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString
from sqlalchemy import ColumnElement, ScalarSelect, func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ci import stream_status
from ci.models import (
    BuildState,
    Event,
    Node,
    NodeState,
    OfflineCause,
    Report,
    ReportState,
    utcnow,
)
from dashboard.context import state
from dashboard.metrics_builds import (
    DURATION_BUCKETS,
    BuildGroup,
    FinishedBuilds,
    read_builds,
)

logger = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)

# A stream error's message becomes a label value only when it is this short
# and printable; otherwise the label points at the status page instead.
MESSAGE_LABEL_MAX = 200
MESSAGE_ELSEWHERE = "(long or unprintable: see the status page)"
HELD_EXTENSION = "hyperv_ci.metrics_builds"  # the app's FinishedBuilds
UNFINISHED = (BuildState.QUEUED, BuildState.RUNNING)
FINISHED = tuple(s for s in BuildState if s.finished)


@dataclass(frozen=True)
class NodeGroup:
    label: str
    state: str
    cause: str  # "" unless the node carries an offline cause
    count: int
    drained: int


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape shows, read in one transaction."""

    now: datetime
    builds: tuple[BuildGroup, ...]
    nodes: tuple[NodeGroup, ...]
    reports: dict[str, int]  # by state
    reports_due: int  # pending and at (or past) their next attempt time
    oldest_due: datetime | None  # the earliest next attempt time among those
    events_stored: int
    events_pending: int
    events_failed: int
    newest_event_at: datetime | None
    stream_error: stream_status.StreamError | None


# -- reading (one transaction, five SELECTs: the builds' in metrics_builds.py) ---------------


def _nodes(session: Session) -> tuple[NodeGroup, ...]:
    query = (select(Node.label, Node.state, Node.offline_cause, func.count(),
                    func.count().filter(Node.drained.is_(True)))
             .group_by(Node.label, Node.state, Node.offline_cause))
    return tuple(NodeGroup(label=label, state=node_state, cause=cause or "", count=count,
                           drained=drained)
                 for label, node_state, cause, count, drained in session.execute(query))


def _reports(session: Session) -> dict[str, int]:
    query = select(Report.state, func.count()).group_by(Report.state)
    return {report_state: count for report_state, count in session.execute(query)}


def _scalars(session: Session, now: datetime) -> tuple[Any, ...]:
    """Event counts, the newest event's receive time and the due reports, in one statement:
    each a subquery the database answers from its own index."""
    def count(*where: ColumnElement[bool]) -> ScalarSelect[int]:
        return select(func.count()).select_from(Event).where(*where).scalar_subquery()

    due = (Report.state == ReportState.PENDING, Report.next_attempt_at <= now)
    return tuple(session.execute(select(
        count(),
        count(Event.processed_at.is_(None)),
        count(Event.failed_at.is_not(None)),
        # The newest by id, as the listener's catch-up reads it (an index
        # lookup; there is no index on received_at).
        select(Event.received_at).order_by(Event.id.desc()).limit(1).scalar_subquery(),
        select(func.count()).select_from(Report).where(*due).scalar_subquery(),
        select(func.min(Report.next_attempt_at)).where(*due).scalar_subquery(),
    )).one())


def _aware(value: datetime | str | None) -> datetime | None:
    """A timestamp from a subquery: SQLite may hand it back as naive text."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def read_snapshot(session: Session, now: datetime | None = None,
                  held: FinishedBuilds | None = None) -> Snapshot:
    """Read the whole scrape in the session's (new) transaction; `held` keeps the
    groups of builds that finished long enough ago between scrapes."""
    now = now or utcnow()
    if session.get_bind().dialect.name == "postgresql":
        # One snapshot for every query of the scrape (counts that add up), and
        # a promise to write nothing. Must be the transaction's first statement.
        session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
    stored, pending, failed, newest, due, oldest_due = _scalars(session, now)
    return Snapshot(
        now=now, builds=read_builds(session, now, held), nodes=_nodes(session),
        reports=_reports(session),
        reports_due=due, oldest_due=_aware(oldest_due), events_stored=stored,
        events_pending=pending, events_failed=failed, newest_event_at=_aware(newest),
        stream_error=stream_status.read(session))


# -- the families (pure) ----------------------------------------------------------------------


def _build_families(groups: Sequence[BuildGroup], jobs: Iterable[str]) -> Iterator[Metric]:
    builds = GaugeMetricFamily(
        "hypervci_builds", "Builds in the database by job, state (queued, running, "
        "finished) and, for finished ones, result.", labels=["job", "state", "result"])
    counts: dict[tuple[str, str], int] = {}
    for group in groups:
        counts[group.job, group.state] = counts.get((group.job, group.state), 0) + group.count
    # Every configured job's series exist from the start (at 0), so a rate or
    # an alert never waits for the first build of a job to see it.
    for job in sorted({*jobs, *(job for job, _ in counts)}):
        for build_state in UNFINISHED:
            builds.add_metric([job, build_state.value, ""], counts.get((job, build_state), 0))
        for result in FINISHED:
            builds.add_metric([job, "finished", result.value], counts.get((job, result), 0))
    yield builds

    yield GaugeMetricFamily(
        "hypervci_queue_length", "Builds waiting for a worker (all jobs).",
        value=sum(g.count for g in groups if g.state == BuildState.QUEUED))

    # A histogram over every finished build, not a window of recent ones: its
    # buckets are counters, and a window would make them fall as old builds
    # leave it (Prometheus reads a fall as a restart). rate()/increase() over a
    # range pick the recent builds; a summary's quantiles could not be summed
    # across jobs.
    durations = HistogramMetricFamily(
        "hypervci_build_duration_seconds", "Run time (start to finish) of every finished "
        "build that started, by job and result; use rate() or increase() for recent builds.",
        labels=["job", "result"])
    for group in sorted(groups, key=lambda g: (g.job, g.state)):
        if group.timed and group.state not in UNFINISHED:
            buckets = [(_bound(b), n) for b, n in zip(DURATION_BUCKETS, group.buckets,
                                                      strict=True)]
            durations.add_metric([group.job, group.state], [*buckets, ("+Inf", group.timed)],
                                 sum_value=group.seconds)
    yield durations


def _bound(seconds: float) -> str:
    """A bucket bound as Go prints it ("30.0"): OpenMetrics wants canonical numbers."""
    return floatToGoString(seconds)


def _node_families(groups: Sequence[NodeGroup]) -> Iterator[Metric]:
    nodes = GaugeMetricFamily(
        "hypervci_nodes", "Nodes by label and state; cause says why an offline (or "
        "recovering) node is out.", labels=["label", "state", "cause"])
    counts: dict[tuple[str, str, str], int] = {}
    drained: dict[str, int] = {}
    for group in groups:
        key = (group.label, group.state, group.cause)
        counts[key] = counts.get(key, 0) + group.count
        drained[group.label] = drained.get(group.label, 0) + group.drained
    expected = [(s.value, "") for s in NodeState if s != NodeState.OFFLINE]
    expected += [(NodeState.OFFLINE.value, c.value) for c in OfflineCause]
    for label in sorted(drained):
        for node_state, cause in expected:
            counts.setdefault((label, node_state, cause), 0)
    for (label, node_state, cause), count in sorted(counts.items()):
        nodes.add_metric([label, node_state, cause], count)
    yield nodes
    drain = GaugeMetricFamily("hypervci_nodes_drained",
                              "Nodes an operator drained (they take no new build).",
                              labels=["label"])
    for label, count in sorted(drained.items()):
        drain.add_metric([label], count)
    yield drain


def _event_families(snap: Snapshot) -> Iterator[Metric]:
    # Events are never deleted, so these two only grow: counters.
    yield CounterMetricFamily("hypervci_events_stored",
                              "Lines of Gerrit's event stream stored.", value=snap.events_stored)
    yield CounterMetricFamily(
        "hypervci_events_failed", "Events the scheduler gave up on (hyperv-ci events "
        "list --failed says why).", value=snap.events_failed)
    yield GaugeMetricFamily("hypervci_events_pending", "Stored events not handled yet.",
                            value=snap.events_pending)
    if snap.newest_event_at is not None:
        lag = max(0.0, (snap.now - snap.newest_event_at).total_seconds())
        yield GaugeMetricFamily(
            "hypervci_listener_lag_seconds", "Seconds since the newest stored event was "
            "received (grows while the listener hears nothing).", value=lag)

    refused = GaugeMetricFamily(
        "hypervci_gerrit_stream_error", "1 while Gerrit refuses the listener's event "
        "stream (host key or account key), with the listener's message.", labels=["message"])
    error = snap.stream_error
    refused.add_metric([message_label(error.message) if error else ""], 1 if error else 0)
    yield refused
    if error is not None:
        yield GaugeMetricFamily(
            "hypervci_gerrit_stream_error_timestamp_seconds",
            "When the listener recorded the stream's refusal (Unix time).",
            value=error.at.timestamp())


def message_label(message: str) -> str:
    """The message itself when it is short and printable, else a pointer to the status page."""
    if 0 < len(message) <= MESSAGE_LABEL_MAX and message.isprintable():
        return message
    return MESSAGE_ELSEWHERE


def _report_families(snap: Snapshot) -> Iterator[Metric]:
    reports = GaugeMetricFamily("hypervci_reports", "Reports (votes and comments) by state.",
                                labels=["state"])
    for report_state in sorted({*(s.value for s in ReportState), *snap.reports}):
        reports.add_metric([report_state], snap.reports.get(report_state, 0))
    yield reports
    yield GaugeMetricFamily(
        "hypervci_report_backlog", "Pending reports whose send time has come: what the "
        "reporter should be sending now.", value=snap.reports_due)
    oldest = snap.oldest_due
    yield GaugeMetricFamily(
        "hypervci_report_overdue_seconds", "How long the longest-waiting due report has "
        "waited past its send time (0: none due).",
        value=0.0 if oldest is None else max(0.0, (snap.now - oldest).total_seconds()))


def families(snap: Snapshot, jobs: Iterable[str]) -> list[Metric]:
    """The metric families of one snapshot; `jobs` are the configured job names."""
    return [*_build_families(snap.builds, jobs), *_node_families(snap.nodes),
            *_event_families(snap), *_report_families(snap)]


# -- the collector and the endpoint -----------------------------------------------------------


class DatabaseCollector:
    """A prometheus-client collector that reads the database on every collect()."""

    def __init__(self, sessions: sessionmaker[Session], jobs: Iterable[str],
                 held: FinishedBuilds | None = None) -> None:
        self.sessions = sessions
        self.jobs = tuple(jobs)
        self.held = held

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as session, session.begin():
            snap = read_snapshot(session, held=self.held)
        yield from families(snap, self.jobs)


def registry_for(sessions: sessionmaker[Session], jobs: Iterable[str],
                 held: FinishedBuilds | None = None) -> CollectorRegistry:
    """A registry of the database collector plus this process' own CPU and memory."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(sessions, jobs, held))
    ProcessCollector(registry=registry)
    return registry


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    app_state = state()
    held = current_app.extensions.setdefault(HELD_EXTENSION, FinishedBuilds())
    registry = registry_for(app_state.sessions, app_state.config.jobs, held)
    # Prometheus asks for OpenMetrics or the text format in Accept; both are served.
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    try:
        body = encode(registry)
    except SQLAlchemyError as exc:
        # The class only: the message may carry the database URL.
        logger.warning("metrics: the database does not answer: %s", type(exc).__name__)
        return f"database unavailable ({type(exc).__name__})\n", 503, {
            "Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}
    return body, 200, {"Content-Type": content_type, "Cache-Control": "no-store"}
