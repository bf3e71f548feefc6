"""The `devstack-hyperv` job: a Linux devstack controller plus Windows Hyper-V computes.

Steps, each a recorded build step with its own log:

1. prepare-change (worker): merge the patchset onto its branch tip (`runners.merger`);
   a conflict ends the build as MERGE_CONFLICT, without a vote.
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
7. cleanup (in `cleanup`): every node, whatever happened; nodes that fail it are returned.

Anything the CI is to blame for (node unreachable, script failed, timeout)
ends the build as ERROR: retried, never a -1. So does an abort (superseded,
abandoned, operator): checked between steps, and inside every long command of
`run` (the executors stop stack.sh, tempest or a Windows script mid-way), so
the nodes are cleaned and freed at once rather than after the step's timeout.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

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
    StopCheck,
)
from runners.job_values import job_secrets
from runners.merger import MergeConflict, PreparedChange, expand_git_url, prepare_change
from runners.render import RenderedJob, RenderError, render_job
from runners.ssh import SSHExecutor
from runners.steps import StepHandle
from runners.tempest_step import TempestStep
from runners.windows_values import ArtefactError, read_checked, worker_uploads
from runners.winrm import WinRMExecutor

logger = logging.getLogger(__name__)

WORKER = "worker"
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# Time allowed on top of check-services.sh's own deadline (it sleeps between polls).
SERVICES_MARGIN = 60
# The steps `run` records, in order, for the "skipped" rows after an early end.
RUN_STEPS = ("prepare-change", "windows-teardown", "windows-bootstrap", "devstack",
             "hyperv-compute", "wait-services", "tempest")


def default_cache_dir() -> Path:
    """Where a worker keeps its per-project git caches between builds."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("HYPERV_CI_GIT_CACHE", str(Path(base) / "hyperv-ci" / "git")))


class _Stop(Exception):
    """Ends `run` early with a result (abort, merge conflict)."""

    def __init__(self, result: JobResult) -> None:
        super().__init__(result.summary)
        self.result = result


class DevstackHypervRunner(Runner):
    """One build of the devstack-hyperv job (a fresh instance per build)."""

    def __init__(self, job: DevstackHypervJob, *, cache_dir: Path | None = None,
                 winrm_backoff: float = 2.0) -> None:
        self.job = job
        self.cache_dir = cache_dir or default_cache_dir()
        self.winrm_backoff = winrm_backoff  # between retries of an idempotent Windows step
        self.controller: NodeConfig | None = None
        self.hyperv: list[NodeConfig] = []
        self.rendered: RenderedJob | None = None
        self.prepared: PreparedChange | None = None
        self.workdir: Path | None = None
        self.dead: set[str] = set()  # nodes whose transport failed: no log collection
        self._ssh: SSHExecutor | None = None
        self._winrm: dict[str, WinRMExecutor] = {}
        self._started: set[str] = set()  # step names `run` has begun
        # The build's abort check, handed to every command `run` starts; never to
        # collect or cleanup, which must still run once the build is aborted.
        self._abort: StopCheck | None = None

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

    def _ps(self, step: StepHandle, node: str, name: str, timeout: float,
            check: bool = True, should_stop: StopCheck | None = None) -> CommandResult:
        """Run one rendered PowerShell script on a Windows node, output into `step`.

        `should_stop` (the build's abort check) stops the script mid-way: CommandAborted.
        """
        assert self.rendered is not None
        step.log(f"--- {name} on {node}")
        with self._watch(node):
            result = self._winrm[node].run_powershell(
                self.rendered.for_node(node, name), timeout=timeout, on_output=step.write,
                idempotent=True, should_stop=should_stop)
        if check and not result.ok:
            step.finish(StepState.ERROR, "", result.exit_code)
            raise InfraError(f"{name} failed on {node} (exit {result.exit_code})"
                             f"{_last_line(result.stderr)}")
        return result

    @contextmanager
    def _watch(self, node: str) -> Iterator[None]:
        """Remember a node whose transport failed (a timeout or abort is not): no log collection."""
        try:
            yield
        except ExecutorError:  # never a CommandTimeout or CommandAborted
            self.dead.add(node)
            raise

    def _sh(self, step: StepHandle, name: str, timeout: float, check: bool = True,
            should_stop: StopCheck | None = None, args: Sequence[str] = ()) -> CommandResult:
        """Run one rendered bash script on the controller, output into `step`.

        `should_stop` (the build's abort check) stops the script mid-way: CommandAborted.
        """
        assert self.rendered is not None and self.controller is not None and self._ssh
        script = self.rendered.file_for(self.controller.name, name)
        step.log(f"--- {name} on {self.controller.name}")
        # Uploaded right before it runs: cleanup works even if the build never reached the node.
        self._ssh.put(script.payload(), script.remote_path, 0o755)
        result = self._ssh.run(["bash", script.remote_path, *args], timeout=timeout,
                               on_output=step.write, should_stop=should_stop)
        if check and not result.ok:
            step.finish(StepState.ERROR, "", result.exit_code)
            raise InfraError(f"{name} failed on {self.controller.name} "
                             f"(exit {result.exit_code}){_last_line(result.stderr)}")
        return result

    def _ps_step(self, step: StepHandle, node: str, name: str) -> None:
        if name == "bootstrap.ps1":
            self._upload_artefacts(step, node)
        self._ps(step, node, name, self.job.command_timeout, should_stop=self._abort)

    def _upload_artefacts(self, step: StepHandle, node: str) -> None:
        """Put the installers and tools configured as worker files where bootstrap takes them.

        Checked against their SHA-256 here first (bootstrap checks again on the node).
        """
        for artefact in worker_uploads(self.job):
            try:
                data = read_checked(artefact)
            except ArtefactError as exc:
                raise InfraError(str(exc)) from None
            with self._watch(node):
                self._winrm[node].put(data, artefact.upload_path)
            step.log(f"uploaded {artefact.local_path} to {artefact.upload_path} "
                     f"({len(data)} bytes, SHA-256 {artefact.sha256})")

    def _step(self, ctx: BuildContext, name: str, node: str,
              body: Callable[[StepHandle], None]) -> None:
        if ctx.should_abort():
            raise _Stop(JobResult(Outcome.ERROR, f"aborted before {name}"))
        self._started.add(name)
        with ctx.steps.step(name, node) as step:
            body(step)

    def _parallel(self, tasks: Sequence[Callable[[], None]]) -> None:
        """Run tasks in threads; all finish, then the first failure (if any) is raised."""
        with ThreadPoolExecutor(max_workers=len(tasks), thread_name_prefix="job") as pool:
            futures = [pool.submit(task) for task in tasks]
            errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error

    # -- the runner interface --------------------------------------------------------------
    def prepare(self, ctx: BuildContext) -> None:
        """Pick the nodes, open (lazily connecting) executors, render the cleanup files."""
        devstack = [n for n in ctx.nodes if n.label == "devstack"]
        hyperv = [n for n in ctx.nodes if n.label == "hyperv"]
        if len(devstack) != 1 or len(hyperv) != self.job.hyperv_nodes:
            raise InfraError(f"the job needs 1 devstack and {self.job.hyperv_nodes} hyperv "
                             f"nodes, got {len(devstack)} and {len(hyperv)}")
        self.controller, self.hyperv = devstack[0], hyperv
        self.workdir = Path(tempfile.mkdtemp(prefix=f"hyperv-ci-build-{ctx.build_id}-"))
        try:
            self._ssh = SSHExecutor(self.controller)
            self._winrm = {n.name: WinRMExecutor(n, backoff=self.winrm_backoff) for n in hyperv}
        except (ConfigError, ValueError) as exc:
            raise InfraError(f"cannot use the nodes: {exc}") from exc
        # Rendered now so collect and cleanup have their scripts even if the merge
        # fails; they do not use the revision (a manual recheck may not carry one).
        revision = ctx.change.revision
        self.rendered = self._render(ctx, revision if _SHA.fullmatch(revision) else "0" * 40)

    def run(self, ctx: BuildContext) -> JobResult:
        self._abort = ctx.should_abort
        try:
            return self._run(ctx)
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

    def _run(self, ctx: BuildContext) -> JobResult:
        assert self.controller is not None
        controller = self.controller.name
        self._step(ctx, "prepare-change", WORKER, lambda step: self._prepare_change(ctx, step))
        assert self.prepared is not None
        self.rendered = self._render(ctx, self.prepared.merge_commit)
        self._save_rendered(ctx)

        def windows(node: str) -> None:
            for name in ("teardown", "bootstrap"):
                self._step(ctx, f"windows-{name}", node,
                           lambda step, name=name: self._ps_step(step, node, f"{name}.ps1"))

        # The real CI built devstack and the Windows nodes side by side.
        self._parallel([lambda: self._step(ctx, "devstack", controller, self._devstack),
                        *((lambda node=n.name: windows(node)) for n in self.hyperv)])
        self._parallel([
            (lambda node=n.name: self._step(ctx, "hyperv-compute", node,
                                            lambda step: self._compute(step, node)))
            for n in self.hyperv
        ])
        self._step(ctx, "wait-services", controller, self._wait_services)
        outcome: list[JobResult] = []
        self._step(ctx, "tempest", controller,
                   lambda step: outcome.append(self._tempest(ctx, step)))
        return outcome[0]

    # -- the steps ---------------------------------------------------------------------------
    def _prepare_change(self, ctx: BuildContext, step: StepHandle) -> None:
        assert self.workdir is not None
        change = ctx.change
        step.log(f"change {change.number},{change.patchset} of {change.project} "
                 f"on {change.branch}: {change.ref}")
        git_url = expand_git_url(ctx.config.gerrit.git_url, change.project)
        try:
            self.prepared = prepare_change(git_url, change, self.workdir / "merge", step.write,
                                           cache_dir=self.cache_dir)
        except MergeConflict as conflict:
            # Recorded as a failed step; the build is reported without a vote.
            summary = "Merge conflict: " + ", ".join(conflict.files[:20])
            raise _Stop(JobResult(Outcome.MERGE_CONFLICT, summary)) from None

    def _devstack(self, step: StepHandle) -> None:
        assert self.rendered and self.controller and self._ssh and self.prepared
        name = self.controller.name
        for item in self.rendered.node_files(name):
            self._ssh.put(item.payload(), item.remote_path,
                          0o755 if item.kind == "script" else 0o644)
        self._ssh.put(self.prepared.bundle.read_bytes(), self.rendered.path(name, "bundle"))
        step.log(f"uploaded {len(self.rendered.node_files(name))} files and the change bundle")
        self._sh(step, "prepare-checkout.sh", self.job.command_timeout, should_stop=self._abort)
        self._sh(step, "stack.sh", self.job.stack_timeout, should_stop=self._abort)

    def _compute(self, step: StepHandle, node: str) -> None:
        assert self.rendered and self.prepared
        executor = self._winrm[node]
        with self._watch(node):
            executor.put(self.prepared.bundle.read_bytes(), self.rendered.path(node, "bundle"))
            for item in self.rendered.node_files(node):
                if item.kind != "script":
                    executor.put(item.payload(), item.remote_path)
        timeout, stop = self.job.command_timeout, self._abort
        self._ps(step, node, "install.ps1", timeout, should_stop=stop)
        self._ps(step, node, "configure-services.ps1", timeout, should_stop=stop)
        started = self._ps(step, node, "start-services.ps1", timeout, check=False,
                           should_stop=stop)
        if not started.ok:
            self._service_stderr(step, node)
            step.finish(StepState.ERROR, "", started.exit_code)
            raise InfraError(f"the Hyper-V services did not start on {node}"
                             f"{_last_line(started.stderr)}")

    def _service_stderr(self, step: StepHandle, node: str) -> None:
        """Run each service's executable by hand on `node`: its stderr says why it died."""
        try:
            self._ps(step, node, "service-stderr.ps1", self.job.command_timeout, check=False,
                     should_stop=self._abort)
        except CommandAborted:
            raise  # the build is over, not just this diagnostic
        except (ExecutorError, CommandTimeout) as exc:
            step.log(f"could not capture the services' stderr on {node}: {exc}")

    def _wait_services(self, step: StepHandle) -> None:
        result = self._sh(step, "check-services.sh", self.job.services_timeout + SERVICES_MARGIN,
                          check=False, should_stop=self._abort)
        if result.ok:
            return
        for node in self.hyperv:
            self._service_stderr(step, node.name)
        step.finish(StepState.ERROR, "", result.exit_code)
        raise InfraError(f"Hyper-V services not up within {self.job.services_timeout}s"
                         f"{_last_line(result.stdout + result.stderr)}")

    def _tempest(self, ctx: BuildContext, step: StepHandle) -> JobResult:
        assert self.rendered and self.controller and self._ssh

        def run_script(args: Sequence[str]) -> CommandResult:
            return self._sh(step, "tempest.sh", self.job.tempest.timeout, check=False,
                            should_stop=self._abort, args=args)

        return TempestStep(self.job.tempest, self._ssh, run_script,
                           self.rendered.path(self.controller.name, "subunit"),
                           ctx.log_dir).run(step)

    # -- logs --------------------------------------------------------------------------------
    def _save_rendered(self, ctx: BuildContext) -> None:
        assert self.rendered is not None
        out = ctx.log_dir / "rendered"
        out.mkdir(parents=True, exist_ok=True)
        for name, text in self.rendered.items():
            # Redacted now: the log tree is browsable while the build runs, before publishing.
            (out / name).write_text(ctx.steps.redact(text), encoding="utf-8")

    def collect(self, ctx: BuildContext) -> None:
        """Step 6: logs of every node that was touched into ctx.log_dir."""
        if self.rendered is None or self.prepared is None or self.controller is None:
            return  # nothing reached the nodes
        tasks = [lambda: self._collect_controller(ctx)]
        tasks += [(lambda node=n.name: self._collect_windows(ctx, node)) for n in self.hyperv]
        try:
            self._parallel(tasks)
        except (InfraError, ExecutorError, CommandTimeout, OSError) as exc:
            logger.warning("build %s: log collection incomplete: %s", ctx.build_id, exc)

    def _collect_controller(self, ctx: BuildContext) -> None:
        assert self.controller and self.rendered and self._ssh
        staging = PurePosixPath(self.rendered.path(self.controller.name, "staging"))

        def body(step: StepHandle) -> None:
            assert self._ssh is not None
            self._sh(step, "collect-logs.sh", self.job.command_timeout)
            files = self._ssh.get_tree(str(staging / "logs"), ctx.log_dir / "controller")
            step.log(f"fetched {len(files)} files")

        with ctx.steps.step("collect-logs", self.controller.name) as step:
            body(step)

    def _collect_windows(self, ctx: BuildContext, node: str) -> None:
        assert self.rendered and self.workdir
        if node in self.dead:
            ctx.steps.skip("collect-logs", node, "node unreachable earlier in the build")
            return
        with ctx.steps.step("collect-logs", node) as step:
            self._ps(step, node, "collect-logs.ps1", self.job.command_timeout)
            archive = self.workdir / f"{node}-logs.zip"
            self._winrm[node].get(self.rendered.path(node, "logs"), archive)
            count = extract_zip(archive, ctx.log_dir / node)
            step.log(f"fetched {count} files")

    # -- cleanup -----------------------------------------------------------------------------
    def cleanup(self, ctx: BuildContext) -> list[str]:
        """Step 7, always: leave every node clean; returns the nodes that could not be."""
        failed: list[str] = []
        if self.rendered is None or self.controller is None:
            # prepare failed before anything reached a node: nothing to clean.
            for node in ctx.nodes:
                ctx.steps.skip("cleanup", node.name, "the job never reached this node")
            self._close()
            return failed

        def clean(node: NodeConfig) -> None:
            try:
                with ctx.steps.step("cleanup", node.name) as step:
                    if node.label == "hyperv":
                        self._ps(step, node.name, "cleanup.ps1", self.job.command_timeout)
                    else:
                        self._sh(step, "cleanup.sh", self.job.command_timeout)
            except Exception as exc:  # any failure means the node is not known to be clean
                logger.warning("build %s: cleanup of %s failed: %s", ctx.build_id, node.name, exc)
                failed.append(node.name)

        with ThreadPoolExecutor(max_workers=1 + len(self.hyperv),
                                thread_name_prefix="cleanup") as pool:
            list(pool.map(clean, [self.controller, *self.hyperv]))
        self._close()
        return sorted(failed)

    def _close(self) -> None:
        for executor in [self._ssh, *self._winrm.values()]:
            if executor is not None:
                try:
                    executor.close()
                except Exception:  # closing a dead connection must not hide the result
                    logger.debug("closing an executor failed", exc_info=True)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return f": {lines[-1][:300]}" if lines else ""


def extract_zip(archive: Path, target: Path) -> int:
    """Unpack a node's log archive under `target`, refusing paths that leave it."""
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    count = 0
    with zipfile.ZipFile(archive) as zipped:
        for info in zipped.infolist():
            name = info.filename.replace("\\", "/")
            dest = (root / name).resolve()
            if info.is_dir() or not dest.is_relative_to(root) or dest == root:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zipped.open(info) as src, dest.open("wb") as out:
                shutil.copyfileobj(src, out)
            count += 1
    return count
