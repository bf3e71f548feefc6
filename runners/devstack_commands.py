"""The devstack-hyperv job's rendered scripts, run on the build's nodes.

`NodeCommands` runs one script at a time on the controller (bash over SSH)
or a Windows node (PowerShell over WinRM), its output into the step's log, a
failure an InfraError (the CI's, never the change's). It remembers what the
build found out on the way: the nodes whose transport failed (no log is
collected from them) and what was already uploaded to the controller (the
same bytes are not sent twice).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ci.config import DevstackHypervJob
from ci.models import StepState
from runners.base import CommandAborted, CommandResult, CommandTimeout, ExecutorError, InfraError
from runners.devstack_build import PreparedBuild, last_line
from runners.steps import StepHandle
from runners.windows_values import ArtefactError, read_checked, worker_uploads


class NodeCommands:
    """One build's scripts on its nodes (a fresh instance per build)."""

    def __init__(self, job: DevstackHypervJob) -> None:
        self.job = job
        self.dead: set[str] = set()  # nodes whose transport failed: no log collection
        self._sent: dict[str, bytes] = {}  # controller path -> SHA-256 of what this build put there

    def ps(self, build: PreparedBuild, step: StepHandle, node: str, name: str,
           timeout: float, check: bool = True) -> CommandResult:
        """Run one rendered PowerShell script on a Windows node, output into `step`.

        `build.should_stop` (the build's abort check) stops the script mid-way:
        CommandAborted.
        """
        step.log(f"--- {name} on {node}")
        with self.watch(node):
            result = build.winrm[node].run_powershell(
                build.rendered.for_node(node, name), timeout=timeout, on_output=step.write,
                idempotent=True, should_stop=build.should_stop)
        if check and not result.ok:
            step.finish(StepState.ERROR, "", result.exit_code)
            raise InfraError(f"{name} failed on {node} (exit {result.exit_code})"
                             f"{last_line(result.stderr)}")
        return result

    @contextmanager
    def watch(self, node: str) -> Iterator[None]:
        """Remember a node whose transport failed (a timeout or abort is not): no log collection."""
        try:
            yield
        except ExecutorError:  # never a CommandTimeout or CommandAborted
            self.dead.add(node)
            raise

    def sh(self, build: PreparedBuild, step: StepHandle, name: str, timeout: float,
           check: bool = True, args: Sequence[str] = ()) -> CommandResult:
        """Run one rendered bash script on the controller, output into `step`.

        `build.should_stop` (the build's abort check) stops the script mid-way:
        CommandAborted.
        """
        controller = build.controller.name
        script = build.rendered.file_for(controller, name)
        step.log(f"--- {name} on {controller}")
        # Uploaded right before it runs (cleanup works even if the build never reached the
        # node), unless the devstack step already put these very bytes there.
        self.put(build, script.payload(), script.remote_path, 0o755)
        result = build.ssh.run(["bash", script.remote_path, *args], timeout=timeout,
                               on_output=step.write, should_stop=build.should_stop)
        if check and not result.ok:
            step.finish(StepState.ERROR, "", result.exit_code)
            raise InfraError(f"{name} failed on {controller} "
                             f"(exit {result.exit_code}){last_line(result.stderr)}")
        return result

    def put(self, build: PreparedBuild, data: bytes, remote_path: str, mode: int) -> None:
        """Upload to the controller, unless this build already put these bytes there."""
        digest = hashlib.sha256(data + mode.to_bytes(2, "big")).digest()
        if self._sent.get(remote_path) != digest:
            build.ssh.put(data, remote_path, mode)
            self._sent[remote_path] = digest

    def upload_artefacts(self, build: PreparedBuild, step: StepHandle, node: str) -> None:
        """Put the installers and tools configured as worker files where bootstrap takes them.

        Checked against their SHA-256 here first (bootstrap checks again on the node).
        """
        for artefact in worker_uploads(self.job):
            try:
                data = read_checked(artefact)
            except ArtefactError as exc:
                raise InfraError(str(exc)) from None
            with self.watch(node):
                build.winrm[node].put(data, artefact.upload_path)
            step.log(f"uploaded {artefact.local_path} to {artefact.upload_path} "
                     f"({len(data)} bytes, SHA-256 {artefact.sha256})")

    def service_stderr(self, build: PreparedBuild, step: StepHandle, node: str) -> None:
        """Run each service's executable by hand on `node`: its stderr says why it died."""
        try:
            self.ps(build, step, node, "service-stderr.ps1", self.job.command_timeout,
                    check=False)
        except CommandAborted:
            raise  # the build is over, not just this diagnostic
        except (ExecutorError, CommandTimeout) as exc:
            step.log(f"could not capture the services' stderr on {node}: {exc}")
