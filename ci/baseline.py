"""Baseline builds: the job run on a branch tip, so a change is not blamed for the branch.

A baseline build has no patchset and is never reported to Gerrit; its
`baseline_runs` row says which project, branch and job it ran, and
`builds.tested_commit` which commit the tip was. The branch's latest
finished baseline of a job is what ci/verdict.py compares a change's
failures with.

Scheduled runs (`baselines:` in the config) are queued by a timer in every
listener and worker process (ci/app/processes.py). Each period has a slot
name (`every-6h:<period number since the epoch>`), and `baseline_runs` is
unique on (project, branch, job, slot): of several processes queueing the
same period, or one restarted mid-period, exactly one queues it. A run asked
for by hand (`hyperv-ci baseline run`) gets a slot of its own.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ci.changes import ChangeInfo, change_info_from_rows
from ci.config import BaselineBranch, Config
from ci.models import BaselineRun, Build, BuildState, TestResult, utcnow
from ci.verdict import BaselineEvidence
from ci.wakeup import BUILDS, announce

logger = logging.getLogger(__name__)

# Failed-test statuses (runners.subunit): what the tip "also fails".
FAILING = ("fail", "uxsuccess")
# A baseline whose build errored says nothing about the tip's tests.
VERDICT_STATES = (BuildState.SUCCEEDED, BuildState.FAILED)
# How often the timer looks for a due period: a period is hours long.
TIMER_SECONDS = 60.0


def tip_change(project: str, branch: str) -> ChangeInfo:
    """The record a baseline build runs: the branch itself, no change (number 0)."""
    return ChangeInfo(number=0, project=project, branch=branch, patchset=0,
                      subject=f"baseline: the tip of {branch}", ref=f"refs/heads/{branch}")


def change_info_of(build: Build) -> ChangeInfo:
    """What a build runs: its patchset, or its baseline's branch tip."""
    if build.patchset is not None:
        return change_info_from_rows(build.patchset.change, build.patchset)
    if build.baseline is None:
        raise ValueError(f"build {build.id} has neither a patchset nor a baseline")
    return tip_change(build.baseline.project, build.baseline.branch)


def _path_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text).strip(".") or "_"


def log_path_of(build: Build) -> str:
    """`<change>/<patchset>/<job>-<id>`, or `baseline/<project>/<branch>/<job>-<id>`."""
    if build.patchset is not None:
        change = build.patchset.change
        return f"{change.number}/{build.patchset.number}/{build.job}-{build.id}"
    info = change_info_of(build)
    return (f"baseline/{_path_part(info.project)}/{_path_part(info.branch)}/"
            f"{build.job}-{build.id}")


def period_slot(now: datetime, every_seconds: float) -> str:
    """The schedule's slot for `now`: the same in every process for a whole period."""
    number = int(now.timestamp() // every_seconds)
    return f"every-{every_seconds / 3600:g}h:{number}"


def manual_slot(now: datetime) -> str:
    return f"manual:{now.strftime('%Y%m%dT%H%M%S')}:{secrets.token_hex(4)}"


def queue_baseline(session: Session, project: str, branch: str, job: str, slot: str,
                   reason: str = "baseline") -> Build | None:
    """Queue `job` on the tip of `branch` for `slot`; None if the slot is already queued."""
    try:
        with session.begin_nested():
            run = BaselineRun(project=project, branch=branch, job=job, slot=slot)
            session.add(run)
            session.flush()
    except IntegrityError:
        return None  # another process queued this period's run
    build = Build(patchset_id=None, baseline_id=run.id, job=job, state=BuildState.QUEUED,
                  reason=reason)
    session.add(build)
    session.flush()
    announce(session, BUILDS)  # a waiting worker claims it once this commits
    logger.info("build %s queued: baseline of %s %s, job %s (%s)", build.id, project, branch,
                job, slot)
    return build


def baseline_jobs(config: Config, target: BaselineBranch) -> list[str]:
    """The target's jobs (default: every job its project runs)."""
    if target.jobs is not None:
        return list(target.jobs)
    project = next(p for p in config.projects if p.name == target.project)
    return list(project.jobs)


def queue_due(session: Session, config: Config, now: datetime | None = None) -> list[Build]:
    """Queue the current period's runs that no process has queued yet."""
    now = now or utcnow()
    slot = period_slot(now, config.baselines.every_seconds)
    queued = []
    for target in config.baselines.branches:
        for job in baseline_jobs(config, target):
            build = queue_baseline(session, target.project, target.branch, job, slot,
                                   reason="baseline (scheduled)")
            if build is not None:
                queued.append(build)
    return queued


def schedule_loop(config: Config, sessions: sessionmaker[Session], stop: threading.Event,
                  interval: float = TIMER_SECONDS) -> None:
    """Queue due baselines now and every `interval` seconds until `stop`."""
    while True:
        try:
            with sessions() as session, session.begin():
                queue_due(session, config)
        except Exception:
            logger.exception("queueing baseline builds failed; retrying in %.0fs", interval)
        if stop.wait(interval):
            return


def start_schedule(config: Config, sessions: sessionmaker[Session],
                   stop: threading.Event) -> threading.Thread | None:
    """The baseline timer thread, when the config schedules any baseline."""
    if not config.baselines.branches:
        return None
    thread = threading.Thread(target=schedule_loop, args=(config, sessions, stop),
                              name="baselines", daemon=True)
    thread.start()
    return thread


@dataclass(frozen=True)
class BaselineSummary:
    """A baseline build, as the CLI lists it."""

    build_id: int
    project: str
    branch: str
    job: str
    slot: str
    state: str
    commit: str | None
    finished_at: datetime | None
    log_url: str | None


def list_baselines(session: Session, limit: int = 20) -> list[BaselineSummary]:
    rows = session.execute(
        select(Build, BaselineRun).join(BaselineRun, Build.baseline_id == BaselineRun.id)
        .order_by(Build.id.desc()).limit(limit)).all()
    return [BaselineSummary(b.id, r.project, r.branch, r.job, r.slot, b.state, b.tested_commit,
                            b.finished_at, b.log_url) for b, r in rows]


def latest_baseline(session: Session, project: str, branch: str,
                    job: str) -> BaselineEvidence | None:
    """The newest finished (succeeded or failed) baseline of `job` on the branch, with
    the tests that failed in it; None if there is none."""
    build = session.scalar(
        select(Build).join(BaselineRun, Build.baseline_id == BaselineRun.id)
        .where(BaselineRun.project == project, BaselineRun.branch == branch,
               BaselineRun.job == job, Build.state.in_(VERDICT_STATES),
               Build.finished_at.is_not(None))
        .order_by(Build.finished_at.desc(), Build.id.desc()).limit(1))
    if build is None or build.finished_at is None:
        return None
    failed = frozenset(session.scalars(
        select(TestResult.test_id).where(TestResult.build_id == build.id,
                                         TestResult.status.in_(FAILING))))
    return BaselineEvidence(build.id, build.log_url or f"baseline build {build.id}",
                            build.finished_at, build.tested_commit, failed)
