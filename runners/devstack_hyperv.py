"""The `devstack-hyperv` job: a Linux devstack controller plus Windows Hyper-V computes.

Steps, each a recorded build step with its own log:

1. prepare-change (worker): merge the patchset onto its branch tip (`runners.merger`);
   a conflict ends the build as MERGE_CONFLICT, without a vote. Checkpoint nodes are
   reverted meanwhile (the worker provisions them; `run` waits for them after the merge).
2. windows-teardown + windows-bootstrap on every Hyper-V node, in parallel with
3. devstack on the controller (files + bundle uploaded, prepare-checkout.sh, stack.sh).
4. hyperv-compute on every Hyper-V node (install, configs, services), then
   wait-services on the controller until every compute and agent is up; if not,
   each node's service stderr goes into the step log and the build is an error.
5. tempest: the verdict comes from the parsed subunit stream, never an exit code.
   Failed tests run again (`tempest.rerun_failed` times, serially); one that then
   passes is flaky, not failed. No test run at all, or no tempest, is an error.
6. collect-logs (in `collect`): controller tree → `controller/`, each Windows node's
   archive → `<node>/`, the rendered files → `rendered/` (the worker redacts secrets).
7. cleanup (in `cleanup`): every static node, whatever happened; nodes that fail it are
   returned. A provisioned node is skipped: the worker turns its VM off, and the next
   build reverts it to its clean checkpoint (runners/provision.py).

Anything the CI is to blame for (node unreachable, script failed, timeout)
ends the build as ERROR: retried, never a -1. So does an abort (superseded,
abandoned, operator): checked between steps, and inside every long command of
`run` (the executors stop stack.sh, tempest or a Windows script mid-way), so
the nodes are cleaned and freed at once rather than after the step's timeout.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

from ci.config import ConfigError, DevstackHypervJob, NodeConfig
from ci.models import StepState
from runners.base import (
    BuildContext,
    CommandAborted,
    CommandResult,
    CommandTimeout,
    ExecutorError,
    InfraError,
    JobResult,
    Outcome,
    Runner,
)
from runners.devstack_build import (
    PreparedBuild,
    close_build,
    default_cache_dir,
    extract_zip,
    last_line,
)
from runners.devstack_commands import NodeCommands
from runners.job_values import job_secrets
from runners.log_archive import extract_tar
from runners.merger import MergeConflict, PreparedChange, expand_git_url, prepare_change
from runners.render import RenderedJob, RenderError, render_job
from runners.ssh import SSHExecutor
from runners.steps import StepHandle
from runners.tempest_step import TempestStep
from runners.winrm import WinRMExecutor

logger = logging.getLogger(__name__)

T = TypeVar("T")

WORKER = "worker"
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# Time allowed on top of check-services.sh's own deadline (it sleeps between polls).
SERVICES_MARGIN = 60
# The steps `run` records, in order, for the "skipped" rows after an early end.
RUN_STEPS = ("prepare-change", "windows-teardown", "windows-bootstrap", "devstack",
             "hyperv-compute", "wait-services", "tempest")


class _Stop(Exception):
    """Ends `run` early with a result (abort, merge conflict)."""

    def __init__(self, result: JobResult) -> None:
        super().__init__(result.summary)
        self.result = result


def _connect_quietly(nodes_ready: Callable[[], None],
                     executor: SSHExecutor | WinRMExecutor) -> None:
    try:
        nodes_ready()  # a node being reverted does not answer yet
    except Exception:  # raised again where the build waits for its nodes
        return
    try:
        executor.connect()
    except ExecutorError as exc:
        logger.debug("connecting to %s ahead of its first command failed: %s",
                     executor.node_name, exc)


class DevstackHypervRunner(Runner[PreparedBuild]):
    """One build of the devstack-hyperv job (a fresh instance per build)."""

    waits_for_nodes = True  # the merge needs no node: provisioning goes on meanwhile

    def __init__(self, job: DevstackHypervJob, *, cache_dir: Path | None = None,
                 winrm_backoff: float = 2.0) -> None:
        self.job = job
        self.cache_dir = cache_dir or default_cache_dir()
        self.winrm_backoff = winrm_backoff  # between retries of an idempotent Windows step
        # What `run` found out, for collect and the tests: the merge it built
        # (None until the change merged: then nothing reached a node).
        self.merged: PreparedChange | None = None
        self._started: set[str] = set()  # step names `run` has begun
        self.commands = NodeCommands(job)  # the build's scripts on its nodes

    def node_labels(self) -> list[str]:
        return ["devstack"] + ["hyperv"] * self.job.hyperv_nodes

    # -- helpers ---------------------------------------------------------------------------
    def _render(self, ctx: BuildContext, revision: str) -> RenderedJob:
        try:
            secrets = job_secrets(self.job)
            change = dataclasses.replace(ctx.change, revision=revision)
            return render_job(ctx.config, ctx.job_name, change, ctx.nodes, secrets, ctx.build_id)
        except (RenderError, ConfigError) as exc:
            raise InfraError(f"cannot render the job's files: {exc}") from exc

    def _ps_step(self, build: PreparedBuild, step: StepHandle, node: str, name: str) -> None:
        if name == "bootstrap.ps1":
            self.commands.upload_artefacts(build, step, node)
        self.commands.ps(build, step, node, name, self.job.command_timeout)

    def _step(self, ctx: BuildContext, name: str, node: str,
              body: Callable[[StepHandle], T]) -> T:
        if ctx.should_abort():
            raise _Stop(JobResult(Outcome.ERROR, f"aborted before {name}"))
        self._started.add(name)
        with ctx.steps.step(name, node) as step:
            return body(step)

    def _parallel(self, tasks: Sequence[Callable[[], None]]) -> None:
        """Run tasks in threads; all finish, then the first failure (if any) is raised."""
        with ThreadPoolExecutor(max_workers=len(tasks), thread_name_prefix="job") as pool:
            futures = [pool.submit(task) for task in tasks]
            errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error

    # -- the runner interface --------------------------------------------------------------
    def prepare(self, ctx: BuildContext) -> PreparedBuild:
        """Pick the nodes, open (lazily connecting) executors, render the cleanup files.

        Raises InfraError, having released what it took.
        """
        devstack = [n for n in ctx.nodes if n.label == "devstack"]
        hyperv = [n for n in ctx.nodes if n.label == "hyperv"]
        if len(devstack) != 1 or len(hyperv) != self.job.hyperv_nodes:
            raise InfraError(f"the job needs 1 devstack and {self.job.hyperv_nodes} hyperv "
                             f"nodes, got {len(devstack)} and {len(hyperv)}")
        workdir = Path(tempfile.mkdtemp(prefix=f"hyperv-ci-build-{ctx.build_id}-"))
        ssh: SSHExecutor | None = None
        winrm: dict[str, WinRMExecutor] = {}
        try:
            try:
                ssh = SSHExecutor(devstack[0])
                for node in hyperv:
                    winrm[node.name] = WinRMExecutor(node, backoff=self.winrm_backoff)
            except (ConfigError, ValueError) as exc:
                raise InfraError(f"cannot use the nodes: {exc}") from exc
            # Rendered now so collect and cleanup have their scripts even if the merge
            # fails; they do not use the revision (a manual recheck may not carry one).
            revision = ctx.change.revision
            rendered = self._render(ctx, revision if _SHA.fullmatch(revision) else "0" * 40)
        except BaseException:
            close_build([ssh, *winrm.values()], workdir)
            raise
        return PreparedBuild(devstack[0], tuple(hyperv), ssh, winrm, rendered, workdir)

    def run(self, ctx: BuildContext, prepared: PreparedBuild) -> JobResult:
        try:
            return self._run(ctx, prepared)
        except _Stop as stop:
            result = stop.result
        except CommandAborted as exc:
            # Stopped mid-step: the same result as an abort between steps.
            result = JobResult(Outcome.ERROR, f"aborted while running: {exc}")
        except (InfraError, ExecutorError, CommandTimeout) as exc:
            result = JobResult(Outcome.ERROR, f"infrastructure error: {exc}")
        for name in RUN_STEPS:
            if name not in self._started:
                ctx.steps.skip(name, None, "not run: " + result.summary[:200])
        return result

    def _run(self, ctx: BuildContext, prepared: PreparedBuild) -> JobResult:
        controller = prepared.controller.name
        # While the worker reverts the checkpoint nodes, the change is merged and the
        # job's files rendered, and the nodes' connections are set up as soon as the
        # nodes answer (an SSH handshake, an NTLM logon per Windows node); a failure
        # there is the first command's to report.
        with ThreadPoolExecutor(max_workers=1 + len(prepared.winrm),
                                thread_name_prefix="connect") as connecting:
            executors: list[SSHExecutor | WinRMExecutor] = [prepared.ssh,
                                                             *prepared.winrm.values()]
            for executor in executors:
                connecting.submit(_connect_quietly, ctx.nodes_ready, executor)
            merged = self._step(ctx, "prepare-change", WORKER,
                                lambda step: self._prepare_change(ctx, prepared.workdir, step))
            # Every command from here on stops when the build is aborted.
            build = dataclasses.replace(prepared, should_stop=ctx.should_abort,
                                        rendered=self._render(ctx, merged.merge_commit))
            self._save_rendered(ctx, build.rendered)
        # If the provisioning failed, the build is the CI's error (raised here), and no
        # node has logs of it to collect.
        ctx.nodes_ready()
        self.merged = merged

        def windows(node: str) -> None:
            for name in ("teardown", "bootstrap"):
                self._step(ctx, f"windows-{name}", node,
                           partial(self._ps_step, build, node=node, name=f"{name}.ps1"))

        # The real CI built devstack and the Windows nodes side by side.
        self._parallel([
            lambda: self._step(ctx, "devstack", controller,
                               lambda step: self._devstack(build, merged, step)),
            *(partial(windows, n.name) for n in build.hyperv)])
        self._parallel([
            partial(self._step, ctx, "hyperv-compute", n.name,
                    partial(self._compute, build, merged, node=n.name))
            for n in build.hyperv
        ])
        self._step(ctx, "wait-services", controller,
                   lambda step: self._wait_services(build, step))
        result = self._step(ctx, "tempest", controller,
                            lambda step: self._tempest(ctx, build, step))
        return dataclasses.replace(result, tested_commit=merged.merge_commit)

    # -- the steps ---------------------------------------------------------------------------
    def _prepare_change(self, ctx: BuildContext, workdir: Path,
                        step: StepHandle) -> PreparedChange:
        change = ctx.change
        step.log(f"change {change.number},{change.patchset} of {change.project} "
                 f"on {change.branch}: {change.ref}")
        git_url = expand_git_url(ctx.config.gerrit.git_url, change.project)
        try:
            return prepare_change(git_url, change, workdir / "merge", step.write,
                                  cache_dir=self.cache_dir)
        except MergeConflict as conflict:
            # Recorded as a failed step; the build is reported without a vote.
            summary = "Merge conflict: " + ", ".join(conflict.files[:20])
            raise _Stop(JobResult(Outcome.MERGE_CONFLICT, summary)) from None

    def _devstack(self, build: PreparedBuild, merged: PreparedChange, step: StepHandle) -> None:
        name = build.controller.name
        for item in build.rendered.node_files(name):
            self.commands.put(build, item.payload(), item.remote_path,
                              0o755 if item.kind == "script" else 0o644)
        build.ssh.put(merged.bundle.read_bytes(), build.rendered.path(name, "bundle"))
        step.log(f"uploaded {len(build.rendered.node_files(name))} files and the change bundle")
        self.commands.sh(build, step, "prepare-checkout.sh", self.job.command_timeout)
        self.commands.sh(build, step, "stack.sh", self.job.stack_timeout)

    def _compute(self, build: PreparedBuild, merged: PreparedChange, step: StepHandle,
                 node: str) -> None:
        executor = build.winrm[node]
        files = [(merged.bundle.read_bytes(), build.rendered.path(node, "bundle"))]
        files += [(item.payload(), item.remote_path) for item in build.rendered.node_files(node)
                  if item.kind != "script"]
        with self.commands.watch(node):
            executor.put_many(files)  # one shell for all of them
        timeout = self.job.command_timeout
        self.commands.ps(build, step, node, "install.ps1", timeout)
        self.commands.ps(build, step, node, "configure-services.ps1", timeout)
        started = self.commands.ps(build, step, node, "start-services.ps1", timeout, check=False)
        if not started.ok:
            self.commands.service_stderr(build, step, node)
            step.finish(StepState.ERROR, "", started.exit_code)
            raise InfraError(f"the Hyper-V services did not start on {node}"
                             f"{last_line(started.stderr)}")

    def _wait_services(self, build: PreparedBuild, step: StepHandle) -> None:
        result = self.commands.sh(build, step, "check-services.sh",
                                  self.job.services_timeout + SERVICES_MARGIN, check=False)
        if result.ok:
            return
        for node in build.hyperv:
            self.commands.service_stderr(build, step, node.name)
        step.finish(StepState.ERROR, "", result.exit_code)
        raise InfraError(f"Hyper-V services not up within {self.job.services_timeout}s"
                         f"{last_line(result.stdout + result.stderr)}")

    def _tempest(self, ctx: BuildContext, build: PreparedBuild, step: StepHandle) -> JobResult:
        def run_script(args: Sequence[str]) -> CommandResult:
            return self.commands.sh(build, step, "tempest.sh", self.job.tempest.timeout,
                                    check=False, args=args)

        return TempestStep(self.job.tempest, build.ssh, run_script,
                           build.rendered.path(build.controller.name, "subunit"),
                           ctx.log_dir).run(step)

    # -- logs --------------------------------------------------------------------------------
    def _save_rendered(self, ctx: BuildContext, rendered: RenderedJob) -> None:
        out = ctx.log_dir / "rendered"
        out.mkdir(parents=True, exist_ok=True)
        for name, text in rendered.items():
            # Redacted now: the log tree is browsable while the build runs, before publishing.
            (out / name).write_text(ctx.steps.redact(text), encoding="utf-8")

    def collect(self, ctx: BuildContext, prepared: PreparedBuild) -> None:
        """Step 6: logs of every node that was touched into ctx.log_dir."""
        if self.merged is None:
            return  # the change never merged: nothing reached the nodes
        tasks: list[Callable[[], None]] = [partial(self._collect_controller, ctx, prepared)]
        tasks += [partial(self._collect_windows, ctx, prepared, n.name) for n in prepared.hyperv]
        try:
            self._parallel(tasks)
        except (InfraError, ExecutorError, CommandTimeout, OSError) as exc:
            logger.warning("build %s: log collection incomplete: %s", ctx.build_id, exc)

    def _collect_controller(self, ctx: BuildContext, build: PreparedBuild) -> None:
        with ctx.steps.step("collect-logs", build.controller.name) as step:
            self.commands.sh(build, step, "collect-logs.sh", self.job.command_timeout)
            # The script's archive, in one download (not the tree file by file).
            archive = build.workdir / "controller-logs.tar.gz"
            build.ssh.get(build.rendered.path(build.controller.name, "logs"), archive)
            count = extract_tar(archive, ctx.log_dir / "controller")
            step.log(f"fetched {count} files")

    def _collect_windows(self, ctx: BuildContext, build: PreparedBuild, node: str) -> None:
        if node in self.commands.dead:
            ctx.steps.skip("collect-logs", node, "node unreachable earlier in the build")
            return
        with ctx.steps.step("collect-logs", node) as step:
            self.commands.ps(build, step, node, "collect-logs.ps1", self.job.command_timeout)
            archive = build.workdir / f"{node}-logs.zip"
            build.winrm[node].get(build.rendered.path(node, "logs"), archive)
            count = extract_zip(archive, ctx.log_dir / node)
            step.log(f"fetched {count} files")

    # -- cleanup -----------------------------------------------------------------------------
    def cleanup(self, ctx: BuildContext, prepared: PreparedBuild | None) -> list[str]:
        """Step 7, always: leave every node clean; returns the nodes that could not be."""
        failed: list[str] = []
        if prepared is None:
            # prepare failed before anything reached a node: nothing to clean.
            for node in ctx.nodes:
                ctx.steps.skip("cleanup", node.name, "the job never reached this node")
            return failed

        def clean(node: NodeConfig) -> None:
            if node.provisioned:
                # As recovery does (runners/recovery.py): its VM is turned off next and
                # reverted before its next build, which undoes whatever cleanup would.
                ctx.steps.skip("cleanup", node.name, "provisioned: turned off and reverted "
                               "to its clean checkpoint before the next build")
                return
            try:
                with ctx.steps.step("cleanup", node.name) as step:
                    if node.label == "hyperv":
                        self.commands.ps(prepared, step, node.name, "cleanup.ps1",
                                         self.job.command_timeout)
                    else:
                        self.commands.sh(prepared, step, "cleanup.sh", self.job.command_timeout)
            except Exception as exc:  # any failure means the node is not known to be clean
                logger.warning("build %s: cleanup of %s failed: %s", ctx.build_id, node.name, exc)
                failed.append(node.name)

        with ThreadPoolExecutor(max_workers=1 + len(prepared.hyperv),
                                thread_name_prefix="cleanup") as pool:
            list(pool.map(clean, [prepared.controller, *prepared.hyperv]))
        # In the background: removing the worker-side scratch tree (the merge's checkout)
        # takes tens of ms, and nothing after cleanup uses it or the connections; the
        # power-off and the vote need not wait. Not a daemon: a stopping worker finishes it.
        threading.Thread(target=close_build, name=f"close-build-{ctx.build_id}",
                         args=([prepared.ssh, *prepared.winrm.values()], prepared.workdir)
                         ).start()
        return sorted(failed)
