"""The worker: claim a build, run its job, record the result, queue the report.

Any number of workers on any number of hosts share the database. Each
renews the lease of the build it runs from a heartbeat thread; a worker
that dies stops renewing, and `ci.queue.reap_expired` (run on a timer by
every worker process and the listener, whatever they are doing; wired in
ci/app/processes.py) turns its build into an `error` with a retry and
hands its nodes to recovery. A keeper thread recovers those nodes (cleans,
checks, returns them: runners/recovery.py) and takes its turn at the pool's
health checks (one process per interval).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.baseline import change_info_of, log_path_of
from ci.changes import ChangeInfo
from ci.config import Config
from ci.models import Build, BuildState, TestResult
from ci.nodes import nodes_of, release, sync_nodes
from ci.report import queue_report
from ci.wakeup import BUILDS, REPORTS, Waiter, Wakeup, announce
from runners import pool
from runners.base import (
    BuildContext,
    CommandStopped,
    ExecutorError,
    InfraError,
    JobResult,
    Outcome,
    Runner,
    TestOutcome,
)
from runners.logs import prune_logs, publish_logs, published_name
from runners.provision import power_off_build, provision_build
from runners.registry import make_runner, node_labels_for
from runners.results import RESULTS_FILE, format_results
from runners.staging import StagingDirs
from runners.steps import StepRecorder, make_redactor
from runners.subunit import FLAKY

logger = logging.getLogger(__name__)

OUTCOME_STATES = {
    Outcome.SUCCEEDED: BuildState.SUCCEEDED,
    Outcome.FAILED: BuildState.FAILED,
    Outcome.ERROR: BuildState.ERROR,
    Outcome.MERGE_CONFLICT: BuildState.MERGE_CONFLICT,
}


def build_log_path(build: Build) -> str:
    """`<change>/<patchset>/<job>-<build id>` (a baseline's: `baseline/<project>/<branch>/...`):
    where a build's logs live under the log root."""
    return log_path_of(build)


def keeper_tick(health_interval: float) -> float:
    """How often the keeper looks for nodes to recover and for its health-check
    turn: often enough that a lost node is recovered within seconds and the
    turn is taken soon after it is due."""
    return max(0.5, min(10.0, health_interval / 6))


class Worker:
    """Runs builds until stopped. `run_once` is the unit the tests drive."""

    def __init__(
        self,
        config: Config,
        sessions: sessionmaker[Session],
        name: str | None = None,
        runner_factory: Callable[[Config, str], Runner[Any]] = make_runner,
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.name = name or config.worker.name or f"{socket.gethostname()}-{id(self):x}"
        self.runner_factory = runner_factory
        self._last_prune = -math.inf  # prune at start; monotonic() may be small after a boot
        self._staging = StagingDirs()  # where each build's job collects its files

    def run(self, stop: threading.Event, on_idle: Callable[[], None] | None = None,
            report: Callable[[], object] | None = None, wakeup: Wakeup | None = None) -> None:
        """Loop until `stop` is set: claim, run; `on_idle` runs between builds.

        `report` (one pass over the report outbox) runs from its own thread,
        so a vote goes out at once even while a build runs for hours. With a
        `wakeup` hub (ci.wakeup) a queued build or report wakes its loop at
        once; `worker.poll_interval` and `reporter.poll_interval` remain the
        fallback polls, so a lost notification only delays the work.
        """
        hub = wakeup or Wakeup()
        if wakeup is None:
            hub.close_when(stop)  # a private hub nobody signals: plain polling
        builds = hub.waiter(BUILDS)
        logger.info("worker %s started", self.name)
        self._sync_nodes(stop)
        if self.config.nodes:
            threading.Thread(target=self._keeper_loop, args=(stop,), name="keeper",
                             daemon=True).start()
        reporter = None
        if report is not None:
            reporter = threading.Thread(target=self._report_loop,
                                        args=(stop, report, hub.waiter(REPORTS)),
                                        name="reporter", daemon=True)
            reporter.start()
        while not stop.is_set():
            try:
                ran = self.run_once()
                if on_idle is not None:
                    on_idle()
                self._maybe_prune()
            except Exception:
                logger.exception("worker %s: unexpected error; continuing", self.name)
                ran = False
            if not ran and not stop.is_set():
                builds.wait(self.config.worker.poll_interval)
        self._staging.drop()
        if reporter is not None:
            # Let a send in flight record its outcome (GerritClient times out in 30 s).
            reporter.join(timeout=120)
        logger.info("worker %s stopped", self.name)

    def _sync_nodes(self, stop: threading.Event) -> None:
        """The nodes' rows follow the config. A database that is down when the
        worker starts is waited for, as the loop waits for one that goes down
        later: the process stays up (its heartbeat says it is not working)."""
        delay = 1.0
        while not stop.is_set():
            try:
                with self.sessions() as session, session.begin():
                    sync_nodes(session, self.config.nodes, self.config.lab_sets)
                return
            except DBAPIError as exc:
                logger.warning("worker %s: cannot update the nodes' table (%s); retrying in "
                               "%.0f s", self.name, type(exc.orig).__name__, delay)
                stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def run_once(self) -> bool:
        """Claim and run one build; False if none was ready.

        Dead workers' builds are reaped by the process's reaper thread
        (ci/reaper.py), not here: the claim is one transaction.
        """
        claimed = self.claim()
        if claimed is None:
            return False
        self._execute(claimed)
        return True

    def claim(self) -> ClaimedBuild | None:
        """Claim a build and mark it started, log location included: one transaction."""
        with self.sessions() as session, session.begin():
            build = queue.claim_next(
                session, self.name, self.config.worker.lease_seconds,
                reserve=pool.PoolReserver(self.config), jobs=list(self.config.jobs),
                claim_values=self._log_location,
            )
            if build is None:
                return None
            # Only a job that takes nodes has any to look up.
            nodes = (tuple(n.name for n in nodes_of(session, build.id))
                     if node_labels_for(self.config, build.job) else ())
            return ClaimedBuild(
                build_id=build.id, job=build.job, change=change_info_of(build),
                log_rel=build_log_path(build), node_names=nodes)

    def _log_location(self, build: Build) -> dict[str, object]:
        """Known from the start, so the dashboard links a running build's step logs."""
        rel = build_log_path(build)
        return {"log_url": self.config.logs.url.rstrip("/") + "/" + rel + "/",
                "log_path": str(self.config.logs.dir / rel)}

    def _keeper_loop(self, stop: threading.Event) -> None:
        """Every tick: recover the nodes a lost worker left, and check the pool if
        it is this worker's turn (one round per `health_interval` in the whole CI)."""
        from runners.health import health_round
        from runners.recovery import recover_nodes

        while not stop.wait(keeper_tick(self.config.worker.health_interval)):
            try:
                recover_nodes(self.config, self.sessions, self.name)
            except Exception:
                logger.exception("node recovery failed")
            try:
                health_round(self.config, self.sessions, self.name)
            except Exception:
                logger.exception("health checks failed")

    def _report_loop(self, stop: threading.Event, report: Callable[[], object],
                     reports: Waiter) -> None:
        """Send the outbox now, whenever a report is queued, and every
        `reporter.poll_interval` seconds (retries, lost wakeups) until `stop`."""
        while not stop.is_set():
            try:
                report()
            except Exception:
                logger.exception("sending reports failed")
            reports.wait(self.config.reporter.poll_interval)

    def _maybe_prune(self) -> None:
        if time.monotonic() - self._last_prune < 3600:
            return
        self._last_prune = time.monotonic()
        removed = prune_logs(self.config.logs.dir, self.config.logs.retention_days)
        if removed:
            logger.info("pruned %s build log trees past retention", removed)

    def execute(self, build_id: int) -> None:
        """Run one claimed build (by id) to the end, whatever happens."""
        with self.sessions() as session:
            build = session.get(Build, build_id)
            assert build is not None
            claimed = ClaimedBuild(
                build_id=build_id, job=build.job, change=change_info_of(build),
                log_rel=build_log_path(build),
                node_names=tuple(n.name for n in nodes_of(session, build_id)))
        self._execute(claimed)

    def _execute(self, claimed: ClaimedBuild) -> None:
        build_id, job_name, ref, rel = (claimed.build_id, claimed.job, claimed.change,
                                        claimed.log_rel)
        log_dir = self.config.logs.dir / rel
        log_url = self.config.logs.url.rstrip("/") + "/" + rel + "/"
        # Step logs are redacted as they are written and browsable at once;
        # what the job collects waits in a private tree until it is redacted.
        staging = self._staging.take()
        redact = make_redactor(self.config.secrets())
        # `abort` asks the job to stop; `lease_done` stops the heartbeat. They
        # are separate because the lease must outlive the job: until `_record`
        # commits, a lapsed lease lets another worker's reaper turn the build
        # into an error, drop its result and take its nodes offline.
        abort = threading.Event()
        lease_done = threading.Event()
        heartbeat = threading.Thread(target=self._heartbeat, args=(build_id, abort, lease_done),
                                     name=f"lease-{build_id}", daemon=True)
        heartbeat.start()
        try:
            nodes = [n for n in self.config.nodes if n.name in claimed.node_names]
            ctx = BuildContext(
                build_id=build_id, job_name=job_name, change=ref, config=self.config,
                log_dir=staging, log_url=log_url,
                steps=StepRecorder(self.sessions, build_id, log_dir, redact),
                nodes=nodes, should_abort=abort.is_set,
            )
            result, failed_nodes = self._run_job(ctx)
            abort.set()  # the job is over; the lease is still renewed
            if result.tests:
                heading = (f"{job_name} for change {ref.number},{ref.patchset} ({ref.project} "
                           f"{ref.branch}): {result.outcome.value}")
                (staging / RESULTS_FILE).write_text(format_results(result.tests, heading),
                                                    encoding="utf-8")
            try:
                publish_logs(log_dir, redact, self.config.logs.gzip_over_bytes,
                             staging=None if self._staging.keep_if_empty(staging) else staging)
            except OSError:
                logger.exception("build %s: publishing logs failed", build_id)
            self._record(claimed, result, failed_nodes, log_url, str(log_dir))
        finally:
            lease_done.set()
            heartbeat.join(timeout=5)

    def _run_job(self, ctx: BuildContext) -> tuple[JobResult, list[str]]:
        failed_nodes: list[str] = []
        provisioning: Future[None] | None = None
        try:
            runner = self.runner_factory(self.config, ctx.job_name)
            prepared: Any = None
            ready = False  # `prepare` returned (its value may be None)
            try:
                # Checkpoint nodes: reverted and answering, before the runner uses them.
                if runner.waits_for_nodes and any(n.provisioned for n in ctx.nodes):
                    # runners.provision reverts the nodes side by side; this thread drives it.
                    driver = ThreadPoolExecutor(1, thread_name_prefix=f"provision-{ctx.build_id}")
                    provisioning = driver.submit(provision_build, ctx, self.sessions)
                    driver.shutdown(wait=False)  # its thread ends with the provisioning
                    ctx = dataclasses.replace(ctx, nodes_ready=provisioning.result)
                else:
                    provision_build(ctx, self.sessions)
                prepared = runner.prepare(ctx)
                ready = True
                result = runner.run(ctx, prepared)
            finally:
                if provisioning is not None:
                    # Nothing is collected, cleaned or turned off under a revert.
                    _settle(ctx.build_id, provisioning)
                try:
                    if ready:
                        runner.collect(ctx, prepared)
                except Exception:
                    logger.exception("build %s: log collection failed", ctx.build_id)
                try:
                    failed_nodes = list(runner.cleanup(ctx, prepared))
                except Exception as exc:
                    logger.exception("build %s: cleanup failed", ctx.build_id)
                    failed_nodes = [n.name for n in ctx.nodes]
                    ctx.steps.skip("cleanup", message=f"cleanup raised: {exc}")
                failed_nodes = power_off_build(ctx, failed_nodes)
        except (InfraError, ExecutorError, CommandStopped) as exc:
            result = JobResult(Outcome.ERROR, f"infrastructure error: {exc}")
        except Exception as exc:
            logger.exception("build %s: the runner crashed", ctx.build_id)
            result = JobResult(Outcome.ERROR, f"internal error: {type(exc).__name__}: {exc}")
        return result, failed_nodes

    def _heartbeat(self, build_id: int, abort: threading.Event,
                   lease_done: threading.Event) -> None:
        """Renew the lease until `lease_done`; set `abort` if the build is no longer ours."""
        interval = max(1.0, self.config.worker.lease_seconds / 3)
        while not lease_done.wait(interval):
            try:
                with self.sessions() as session, session.begin():
                    ours = queue.renew_lease(session, build_id, self.name,
                                             self.config.worker.lease_seconds)
            except Exception:
                logger.exception("build %s: lease renewal failed", build_id)
                continue
            if not ours:
                if not lease_done.is_set():  # else `_record` just finished it
                    logger.info("build %s was superseded or aborted: stopping it", build_id)
                abort.set()
                return

    def _record(self, claimed: ClaimedBuild, result: JobResult, failed_nodes: list[str],
                log_url: str, log_path: str) -> None:
        """Finish the build, store its tests, release its nodes and queue its report: one commit."""
        build_id = claimed.build_id
        state = OUTCOME_STATES[result.outcome]
        redact = make_redactor(self.config.secrets())
        with self.sessions() as session, session.begin():
            # The tested commit in the finishing UPDATE: set on the loaded build
            # it would be one more UPDATE, and a flush before every later SELECT.
            build = queue.finish(session, build_id, self.name, state, redact(result.summary),
                                 log_url=log_url, log_path=log_path,
                                 tested_commit=result.tested_commit)
            if claimed.node_names:
                release(session, build_id, failed_nodes)
                announce(session, BUILDS)  # a build waiting for these nodes can start
            if build is None:
                return  # superseded or aborted while running: no result, no vote
            if result.tests:
                # One executemany (no ids read back): 1,500 tests are one statement.
                session.execute(insert(TestResult),
                                test_result_rows(build_id, result.tests, redact, Path(log_path)))
            retry = None
            if state == BuildState.ERROR:
                retry = queue.retry_after_error(session, build, self.config.worker.max_attempts)
            if retry is None:
                flaky = [t.test_id for t in result.tests if t.status == FLAKY]
                queue_report(session, build, self.config, flaky=flaky,
                             has_results=bool(result.tests))


def _settle(build_id: int, provisioning: Future[None]) -> None:
    """Wait for a build's provisioning; a failure the runner never waited for (it
    stopped first: a merge conflict) is logged: its nodes are already offline."""
    wait([provisioning])
    if (exc := provisioning.exception()) is not None:
        logger.warning("build %s: provisioning failed: %s", build_id, exc)


def test_result_rows(build_id: int, tests: Sequence[TestOutcome], redact: Callable[[str], str],
                     log_dir: Path) -> list[dict[str, object]]:
    """The `test_results` rows of a build's tests: details redacted and capped,
    attachments named as published in `log_dir` (their content stays there)."""
    return [{"build_id": build_id, "test_id": t.test_id, "status": t.status,
             "duration": t.duration, "details": redact(t.details)[:20000],
             "attachments": published_name(log_dir, t.attachments) or None}
            for t in tests]


@dataclass(frozen=True)
class ClaimedBuild:
    """What the worker needs of a build it claimed, read in the claiming transaction."""

    build_id: int
    job: str
    change: ChangeInfo
    log_rel: str  # `build_log_path`: the build's tree under the log root
    node_names: tuple[str, ...]
