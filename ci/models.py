"""The whole schema of hyperv-ci: the one module that defines tables.

Every process (listener, workers, dashboard, CLI) shares this database; every
arrow of the design that crosses a process boundary is a row here.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Now, timezone-aware UTC (every timestamp in the database is UTC)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A DateTime that always comes back timezone-aware (SQLite drops tzinfo)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class BuildState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ERROR = "error"  # the CI broke, not the change: retried, never a -1
    MERGE_CONFLICT = "merge_conflict"  # the change does not merge: reported without a vote
    SUPERSEDED = "superseded"
    ABORTED = "aborted"

    @property
    def finished(self) -> bool:
        return self not in (BuildState.QUEUED, BuildState.RUNNING)


class StepState(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ERROR = "error"
    SKIPPED = "skipped"


class NodeState(enum.StrEnum):
    READY = "ready"
    RESERVED = "reserved"
    CLEANING = "cleaning"
    OFFLINE = "offline"


class OfflineCause(enum.StrEnum):
    """Why a node is offline: decides who may bring it back."""

    HEALTH_CHECK = "health-check"  # failed health checks: a passing check revives it
    # Left dirty by a build (its cleanup, or the recovery's, failed): only an
    # operator revives it, and `nodes enable` cleans and checks it first.
    CLEANUP_FAILED = "cleanup-failed"
    # Its build's worker died mid-way: a worker cleans it, checks it and returns
    # it to the pool by itself (runners/recovery.py); state `cleaning` meanwhile.
    WORKER_LOST = "worker-lost"
    # An operator asked from the dashboard to enable it: a worker's keeper cleans
    # and checks it first, as `nodes enable` does (the dashboard runs no I/O on nodes).
    ENABLE_REQUESTED = "enable-requested"
    # A checkpoint-provisioned node did not revert, start or answer as itself:
    # its build was retried elsewhere; `nodes enable` (which reverts it) revives it.
    PROVISION_FAILED = "provision-failed"


class ReportState(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    # Gave up: after the retry time budget (reporter.retry_seconds), or at once
    # when Gerrit's answer cannot change ("no such patch set"); last_error says which.
    FAILED = "failed"
    # Gerrit refused the vote (label permissions, gerrit.label); the comment went
    # without it. Permanent: never retried.
    LABEL_REFUSED = "label-refused"
    # The change was abandoned or merged before the report went out: nothing
    # posted (last_error: "change closed (ABANDONED)"). Never retried.
    NOT_SENT = "not-sent"


class Event(Base):
    """One raw line of `gerrit stream-events`, stored before anything is decided."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    type: Mapped[str] = mapped_column(String(64), index=True)
    raw: Mapped[str] = mapped_column(Text)
    # Set in the transaction that creates the event's builds (acknowledge = act).
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    outcome: Mapped[str | None] = mapped_column(Text)
    # Set with processed_at when the scheduler gave up on the event (outcome says why).
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)


class Change(Base):
    __tablename__ = "changes"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(Integer, unique=True)
    project: Mapped[str] = mapped_column(String(255), index=True)
    branch: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str] = mapped_column(Text, default="")
    owner_name: Mapped[str] = mapped_column(String(255), default="")
    owner_email: Mapped[str] = mapped_column(String(255), default="")
    url: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(32), default="NEW")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    patchsets: Mapped[list[Patchset]] = relationship(
        back_populates="change", order_by="Patchset.number"
    )


class Patchset(Base):
    __tablename__ = "patchsets"
    __table_args__ = (UniqueConstraint("change_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    change_id: Mapped[int] = mapped_column(ForeignKey("changes.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    revision: Mapped[str] = mapped_column(String(64), default="")
    ref: Mapped[str] = mapped_column(String(255), default="")
    uploader_name: Mapped[str] = mapped_column(String(255), default="")
    files: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    change: Mapped[Change] = relationship(back_populates="patchsets")
    builds: Mapped[list[Build]] = relationship(back_populates="patchset")


class Build(Base):
    """One run of one job for one patchset: the queue entry and its result."""

    __tablename__ = "builds"
    __table_args__ = (
        Index("ix_builds_state_id", "state", "id"),
        # The history pages (dashboard/history.py): the list's keyset order, alone
        # and under a job or result filter; a change's builds; a window's builds.
        Index("ix_builds_created_at_id", "created_at", "id"),
        Index("ix_builds_job_created_at_id", "job", "created_at", "id"),
        Index("ix_builds_state_created_at_id", "state", "created_at", "id"),
        Index("ix_builds_patchset_id", "patchset_id"),
        Index("ix_builds_finished_at", "finished_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # A change's build runs a patchset; a baseline build (ci/baseline.py) runs a
    # branch tip instead: no patchset, its `baseline` says which branch.
    patchset_id: Mapped[int | None] = mapped_column(
        ForeignKey("patchsets.id", ondelete="CASCADE"))
    baseline_id: Mapped[int | None] = mapped_column(
        ForeignKey("baseline_runs.id", ondelete="CASCADE"), index=True)
    job: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(32), default=BuildState.QUEUED, index=True)
    reason: Mapped[str] = mapped_column(String(64), default="patchset-created")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Claim and lease: the worker that runs it renews the lease; a reaper
    # requeues (or errors out) builds whose lease ran out.
    worker: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    abort_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    summary: Mapped[str] = mapped_column(Text, default="")
    log_url: Mapped[str | None] = mapped_column(Text)
    # Indexed: the log listing's banner finds the build of a log tree by it.
    log_path: Mapped[str | None] = mapped_column(Text, index=True)
    # A build retried after an infrastructure error points at the first one.
    retry_of_id: Mapped[int | None] = mapped_column(ForeignKey("builds.id"))
    # The operator who forced this build of a change the file filter excludes
    # (the dashboard's "Force build"): the vote comment names them.
    forced_by: Mapped[str | None] = mapped_column(String(255))
    # The commit the job tested (a change's merge onto its tip, or the tip itself).
    tested_commit: Mapped[str | None] = mapped_column(String(64))

    patchset: Mapped[Patchset | None] = relationship(back_populates="builds")
    baseline: Mapped[BaselineRun | None] = relationship(back_populates="builds")
    steps: Mapped[list[BuildStep]] = relationship(
        back_populates="build", order_by="BuildStep.id", cascade="all, delete-orphan"
    )
    tests: Mapped[list[TestResult]] = relationship(
        back_populates="build", order_by="TestResult.id", cascade="all, delete-orphan"
    )
    report: Mapped[Report | None] = relationship(back_populates="build")

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or utcnow()
        return (end - self.started_at).total_seconds()


class BuildStep(Base):
    __tablename__ = "build_steps"
    # A node's builds (the history's node filter, failures per node).
    __table_args__ = (Index("ix_build_steps_node_build_id", "node", "build_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    build_id: Mapped[int] = mapped_column(ForeignKey("builds.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    node: Mapped[str | None] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(32), default=StepState.RUNNING)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    log_name: Mapped[str | None] = mapped_column(Text)  # relative to the build's log dir
    # The last few KB of output, refreshed while the step runs (the live view).
    output_tail: Mapped[str] = mapped_column(Text, default="")
    message: Mapped[str] = mapped_column(Text, default="")
    # The tempest step's live progress, from its subunit stream as it arrives
    # (runners/tempest_progress.py); None on every other step.
    tests_done: Mapped[int | None] = mapped_column(Integer)
    tests_passed: Mapped[int | None] = mapped_column(Integer)
    tests_failed: Mapped[int | None] = mapped_column(Integer)
    current_test: Mapped[str | None] = mapped_column(Text)

    build: Mapped[Build] = relationship(back_populates="steps")


# The statuses the partial index ix_test_results_failing holds (migration 0006).
FAILING_RESULTS_SQL = "status IN ('fail', 'uxsuccess', 'flaky')"


class TestResult(Base):
    __tablename__ = "test_results"
    __table_args__ = (
        # One test's history across builds, with the status the flaky query
        # reads from the index alone (ci/test_history.py).
        Index("ix_test_results_test_id_build_id", "test_id", "build_id", "status"),
        # The failing and flaky results of a window of builds: few of all rows.
        Index("ix_test_results_failing", "build_id", "test_id",
              postgresql_where=text(FAILING_RESULTS_SQL), sqlite_where=text(FAILING_RESULTS_SQL)),
    )
    __test__ = False  # not a pytest class

    id: Mapped[int] = mapped_column(primary_key=True)
    build_id: Mapped[int] = mapped_column(ForeignKey("builds.id", ondelete="CASCADE"), index=True)
    test_id: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32))  # success fail skip xfail uxsuccess
    duration: Mapped[float | None] = mapped_column(Float)
    details: Mapped[str] = mapped_column(Text, default="")
    # The test's other attachments, a file in the build's log tree (relative to
    # its log URL); None when it had none. Never stored in the database.
    attachments: Mapped[str | None] = mapped_column(String(512))

    build: Mapped[Build] = relationship(back_populates="tests")


class Node(Base):
    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    label: Mapped[str] = mapped_column(String(64), index=True)
    address: Mapped[str] = mapped_column(String(255), default="")
    state: Mapped[str] = mapped_column(String(32), default=NodeState.READY)
    # An OfflineCause while offline, else None: health checks revive only their own offlines.
    offline_cause: Mapped[str | None] = mapped_column(String(32))
    drained: Mapped[bool] = mapped_column(Boolean, default=False)
    build_id: Mapped[int | None] = mapped_column(ForeignKey("builds.id", ondelete="SET NULL"))
    health_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    message: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # The build whose leftovers the node may still hold (its worker died, or its
    # cleanup failed): the cleanup run before the node serves again is that
    # build's job's, for that build's change. None once the node is clean.
    dirty_build_id: Mapped[int | None] = mapped_column(
        ForeignKey("builds.id", ondelete="SET NULL"))
    # From the configuration: the lab set whose builds may use the node (None:
    # no lab sets), and how it is made clean (`static` or `checkpoint`).
    lab_set: Mapped[str | None] = mapped_column(String(128), index=True)
    provision: Mapped[str] = mapped_column(String(32), default="static",
                                           server_default="static")


class Report(Base):
    """The outbox: one vote/comment per build, sent by the reporter, never twice."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    build_id: Mapped[int] = mapped_column(ForeignKey("builds.id", ondelete="CASCADE"), unique=True)
    project: Mapped[str] = mapped_column(String(255))
    change_number: Mapped[int] = mapped_column(Integer)
    patchset_number: Mapped[int] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(String(64))
    vote: Mapped[int | None] = mapped_column(Integer)  # None: a comment without a vote
    message: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(32), default=ReportState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str] = mapped_column(Text, default="")
    # Gerrit's refusal of the vote: from then on the comment is sent without it.
    label_refused: Mapped[str | None] = mapped_column(Text)

    build: Mapped[Build] = relationship(back_populates="report")


class Lease(Base):
    """A named turn shared by every process: `ci.leases.take_turn` gives it to one
    holder per interval (the health checks of the whole pool)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255), default="")
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ListenerState(Base):
    """Small key/value facts the listener keeps across restarts (last event time)."""

    __tablename__ = "listener_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class User(Base):
    """A dashboard account (ci/accounts.py): only operators may act."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)  # Argon2id, PHC string
    role: Mapped[str] = mapped_column(String(32), default="operator")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class AuditEntry(Base):
    """One operator action (ci/audit.py): who, when, what, on which target, from where.

    `actor` is a name, not a key to users: the record outlives the account,
    and a reverse proxy's users have no local row.
    """

    __tablename__ = "audit_log"
    # The build and node pages list the entries of one target, newest first.
    __table_args__ = (Index("ix_audit_log_target", "target_kind", "target_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(255))
    auth: Mapped[str] = mapped_column(String(16))  # local | proxy
    action: Mapped[str] = mapped_column(String(32))
    target_kind: Mapped[str] = mapped_column(String(16))  # build | patchset | node
    target_id: Mapped[str] = mapped_column(String(255))
    detail: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(64), default="")  # the client's address


class BaselineRun(Base):
    """One requested run of a job on a branch tip (ci/baseline.py): the branch's baseline.

    `slot` is the schedule's period (`every-6h:<n>`) or a one-off name for a run
    asked for by hand; the unique key lets any number of processes try to queue
    a period's run and only one succeed.
    """

    __tablename__ = "baseline_runs"
    __table_args__ = (UniqueConstraint("project", "branch", "job", "slot"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(String(255))
    branch: Mapped[str] = mapped_column(String(255))
    job: Mapped[str] = mapped_column(String(128))
    slot: Mapped[str] = mapped_column(String(64))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    builds: Mapped[list[Build]] = relationship(back_populates="baseline", order_by="Build.id")


class SignatureMatch(Base):
    """A known-failure signature (ci/signatures.py) that matched a failed build."""

    __tablename__ = "signature_matches"

    id: Mapped[int] = mapped_column(primary_key=True)
    build_id: Mapped[int] = mapped_column(ForeignKey("builds.id", ondelete="CASCADE"), index=True)
    signature_id: Mapped[str] = mapped_column(String(128))
    bug: Mapped[str] = mapped_column(Text)
    # What matched: a failed test (test/traceback signatures) or a log file's line.
    test_id: Mapped[str | None] = mapped_column(Text)
    file: Mapped[str | None] = mapped_column(Text)
    excerpt: Mapped[str] = mapped_column(Text, default="")


class FailureVerdict(Base):
    """How the verdict (ci/verdict.py) explained one failed test of a failed build."""

    __tablename__ = "failure_verdicts"

    id: Mapped[int] = mapped_column(primary_key=True)
    build_id: Mapped[int] = mapped_column(ForeignKey("builds.id", ondelete="CASCADE"), index=True)
    test_id: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(32))  # ci.verdict.FailureKind
    reason: Mapped[str] = mapped_column(Text, default="")
    link: Mapped[str | None] = mapped_column(Text)


class TestFlip(Base):
    """One change of a test's outcome on the same code (the flaky rule, ci/test_history.py),
    written when the build that shows it is recorded (ci/verdict_record.py) and by
    migration 0012 for the history before it; the /flaky page counts these rows."""

    __tablename__ = "test_flips"
    # The flaky page reads a window of flips: all of it from this index.
    __table_args__ = (Index("ix_test_flips_finished_at", "finished_at"),)
    __test__ = False  # not a pytest class

    id: Mapped[int] = mapped_column(primary_key=True)
    test_id: Mapped[str] = mapped_column(Text)
    # Where it showed: the build that re-ran it, or the later build of a recheck.
    build_id: Mapped[int] = mapped_column(ForeignKey("builds.id", ondelete="CASCADE"),
                                          index=True)
    # A recheck flip's earlier build; None for a re-run inside one build.
    from_build_id: Mapped[int | None] = mapped_column(
        ForeignKey("builds.id", ondelete="CASCADE"), index=True)
    patchset_id: Mapped[int | None] = mapped_column(
        ForeignKey("patchsets.id", ondelete="CASCADE"))  # None: a baseline build's re-run
    job: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))  # "rerun" or "recheck"
    # The later run passed (fail -> pass; a re-run always): a group of recheck flips
    # counts only with one of these in the window.
    recovered: Mapped[bool] = mapped_column(Boolean)
    # When the earlier of its builds finished: a window that starts by then holds both.
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # When the build where it failed finished (the page's "last failed").
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
