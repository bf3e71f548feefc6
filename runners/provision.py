"""Checkpoint provisioning: a node that is a VM on a parent Hyper-V host is
reverted to its clean checkpoint before every build and turned off after it.

Before the job's steps, each `provision: checkpoint` node of the build gets a
`provision` step: over WinRM to its parent host, a rendered PowerShell script
turns the VM off, applies the checkpoint and starts it
(templates/provision-revert.ps1.j2); then the node is polled until it answers
(WinRM for a Windows node, SSH for a controller) and must say it is the node
expected: its host name is the node's name, and the marker file the checkpoint
carries holds the configured `marker`. Any failure is an infrastructure error:
the node goes offline (`provision-failed`, the cause in its message) and the
build is retried on another set, never voted -1. After the build a
`power-off` step turns each VM off (`Stop-VM -TurnOff`); the next build
reverts it again, so nothing one build leaves survives into the next.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from ci import nodes
from ci.config import Config, ConfigError, NodeConfig, ParentHostConfig
from ci.models import OfflineCause
from runners.base import BuildContext, CommandResult, CommandStopped, ExecutorError, InfraError
from runners.render import make_environment
from runners.steps import StepHandle

logger = logging.getLogger(__name__)

# Where a clean checkpoint carries its marker (written before the checkpoint
# is taken; docs/nodes.md says how). Linux: relative to the CI user's home.
WINDOWS_MARKER_PATH = "C:\\ProgramData\\hyperv-ci\\checkpoint-marker.txt"
LINUX_MARKER_PATH = ".hyperv-ci/checkpoint-marker"
# Hyper-V applies a checkpoint in seconds; Windows then boots in a minute or two.
PARENT_TIMEOUT = 600.0
ANSWER_TIMEOUT = 600.0
ANSWER_POLL = 2.0
PROBE_TIMEOUT = 30.0
# A fixed command (nothing from Gerrit or the config goes into it).
_LINUX_IDENTITY = (
    'printf "host=%s\\n" "$(hostname)"; m="$HOME/' + LINUX_MARKER_PATH + '"; '
    'if [ -f "$m" ]; then printf "marker=%s\\n" "$(cat "$m")"; fi')


class ProvisionError(InfraError):
    """A node did not revert, start, answer, or answer as itself."""


@dataclass(frozen=True)
class Identity:
    """What a node said about itself once it answered."""

    host_name: str
    marker: str | None


def parse_identity(stdout: str) -> Identity:
    """The `host=` and `marker=` lines of the identity probe."""
    host, marker = "", None
    for line in stdout.splitlines():
        key, _, value = line.strip().partition("=")
        if key == "host" and not host:
            host = value.strip()
        elif key == "marker" and marker is None:
            marker = value.strip()
    return Identity(host, marker)


def identity_problem(node: NodeConfig, found: Identity) -> str | None:
    """Why the machine that answered is not `node` reverted (None: it is).

    Host names compare case-insensitively and by their first label: Windows
    reports its NetBIOS name in capitals, Linux may report a full name.
    """
    short = found.host_name.split(".")[0]
    if short.casefold() != node.name.casefold():
        return (f"answered as host {found.host_name!r}, not {node.name!r}: the address "
                "reaches another machine, or the VM's host name is not the node's name")
    if node.marker is not None and found.marker != node.marker:
        shown = "no marker file" if found.marker is None else f"marker {found.marker!r}"
        return (f"has {shown}, not the checkpoint's {node.marker!r}: checkpoint "
                f"{node.checkpoint!r} is not the clean one, or was not applied")
    return None


def render(template: str, **values: str) -> str:
    """One of the provisioning scripts, values quoted for PowerShell."""
    return make_environment().get_template(template).render(**values)


def parent_of(config: Config, node: NodeConfig) -> ParentHostConfig:
    parent = next((p for p in config.parent_hosts if p.name == node.parent), None)
    if parent is None:
        raise ConfigError(f"node {node.name}: no parent host {node.parent!r}")
    return parent


def run_on_parent(config: Config, node: NodeConfig, script: str,
                  on_output: Callable[[str], None] | None = None) -> CommandResult:
    """Run one provisioning script on `node`'s parent host."""
    from runners.winrm import WinRMExecutor

    executor = WinRMExecutor(parent_of(config, node).as_node())
    try:
        return executor.run_powershell(script, timeout=PARENT_TIMEOUT, on_output=on_output,
                                       idempotent=True)
    finally:
        executor.close()


def probe_identity(node: NodeConfig) -> Identity:
    """Ask the node who it is (ExecutorError while it does not answer)."""
    if node.winrm is not None:
        from runners.winrm import WinRMExecutor

        script = render("provision-identity.ps1.j2", marker_path=WINDOWS_MARKER_PATH)
        winrm = WinRMExecutor(node)
        try:
            result = winrm.run_powershell(script, timeout=PROBE_TIMEOUT, retries=0)
        finally:
            winrm.close()
    else:
        from runners.ssh import SSHExecutor

        ssh = SSHExecutor(node, connect_timeout=PROBE_TIMEOUT)
        try:
            result = ssh.run(["sh", "-c", _LINUX_IDENTITY], timeout=PROBE_TIMEOUT)
        finally:
            ssh.close()
    if not result.ok:
        raise ExecutorError(f"identity probe exited {result.exit_code}: "
                            f"{(result.stderr or result.stdout).strip()[-300:]}")
    return parse_identity(result.stdout)


def wait_until_answers(node: NodeConfig, log: Callable[[str], None], *,
                       timeout: float = ANSWER_TIMEOUT, poll: float = ANSWER_POLL,
                       should_stop: Callable[[], bool] = lambda: False) -> Identity:
    """Poll the node until it answers; ProvisionError past `timeout`."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        if should_stop():
            raise ProvisionError(f"{node.name}: stopped while waiting for it to answer")
        try:
            return probe_identity(node)
        except (ExecutorError, CommandStopped, OSError) as exc:
            if str(exc) != last:
                log(f"not answering yet: {exc}")
                last = str(exc)
        if time.monotonic() + poll > deadline:
            raise ProvisionError(f"{node.name} did not answer within {timeout:.0f} s after "
                                 f"its VM started: {last}")
        time.sleep(poll)


def provision_node(config: Config, node: NodeConfig, step: StepHandle, *,
                   answer_timeout: float = ANSWER_TIMEOUT,
                   should_stop: Callable[[], bool] = lambda: False) -> None:
    """Revert, start and identify one node; ProvisionError with the cause."""
    parent = node.parent or "?"
    step.log(f"reverting VM {node.vm_name!r} on {parent} to checkpoint {node.checkpoint!r}")
    script = render("provision-revert.ps1.j2", vm=node.vm_name, checkpoint=node.checkpoint)
    _on_parent(config, node, script, f"reverting VM {node.vm_name!r} on {parent}",
               on_output=step.write)
    found = wait_until_answers(node, step.log, timeout=answer_timeout, should_stop=should_stop)
    problem = identity_problem(node, found)
    if problem is not None:
        raise ProvisionError(f"{node.name} {problem}")
    marker = f", marker {found.marker!r}" if found.marker is not None else ""
    step.log(f"answering as {found.host_name}{marker}")


def power_off(config: Config, node: NodeConfig,
              on_output: Callable[[str], None] | None = None) -> None:
    """Turn `node`'s VM off (ProvisionError if the parent host refuses)."""
    script = render("provision-power-off.ps1.j2", vm=node.vm_name)
    _on_parent(config, node, script, f"turning VM {node.vm_name!r} off", on_output=on_output)


def _on_parent(config: Config, node: NodeConfig, script: str, doing: str, *,
               on_output: Callable[[str], None] | None) -> None:
    """Run one of the parent host's scripts for `node`; ProvisionError saying what failed."""
    try:
        result = run_on_parent(config, node, script, on_output=on_output)
    except (ExecutorError, CommandStopped, ConfigError, OSError) as exc:
        raise ProvisionError(f"{node.name}: parent host {node.parent or '?'} failed: "
                             f"{exc}") from exc
    if not result.ok:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        raise ProvisionError(f"{node.name}: {doing} exited {result.exit_code}: "
                             f"{detail[0][:300]}")


def check_provisioned(config: Config, node: NodeConfig) -> tuple[bool, str]:
    """A provisioned node's health between builds (its VM is off): the parent host
    answers, and the VM and its clean checkpoint exist. Never raises."""
    script = render("provision-status.ps1.j2", vm=node.vm_name, checkpoint=node.checkpoint)
    try:
        result = run_on_parent(config, node, script)
    except (ExecutorError, CommandStopped, ConfigError, OSError) as exc:
        return False, f"parent host {node.parent}: {type(exc).__name__}: {exc}"
    if not result.ok:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        return False, f"parent host {node.parent}: {detail[0][:300]}"
    return True, (result.stdout.strip().splitlines()[-1:] or ["ok"])[0]


def _each(nodes_: Sequence[NodeConfig], work: Callable[[NodeConfig], None],
          ) -> dict[str, Exception]:
    """Run `work` for every node in parallel; the exceptions by node name."""
    def one(node: NodeConfig) -> Exception | None:
        try:
            work(node)
        except Exception as exc:
            return exc
        return None

    with ThreadPoolExecutor(max_workers=min(8, len(nodes_)),
                            thread_name_prefix="provision") as pool:
        outcomes = list(pool.map(one, nodes_))
    return {n.name: exc for n, exc in zip(nodes_, outcomes, strict=True) if exc is not None}


def provision_build(ctx: BuildContext, sessions: sessionmaker[Session], *,
                    answer_timeout: float = ANSWER_TIMEOUT) -> None:
    """The `provision` step of every provisioned node of the build, in parallel.

    A node that fails goes offline (`provision-failed`) with the cause, and the
    build stops with ProvisionError (an infra error: retried, never voted).
    """
    wanted = [n for n in ctx.nodes if n.provisioned]
    if not wanted:
        return

    def work(node: NodeConfig) -> None:
        with ctx.steps.step("provision", node=node.name) as step:
            provision_node(ctx.config, node, step, answer_timeout=answer_timeout,
                           should_stop=ctx.should_abort)

    failed = _each(wanted, work)
    if not failed:
        return
    with sessions() as session, session.begin():
        for name, exc in failed.items():
            nodes.mark_offline(session, name, f"provisioning for build {ctx.build_id} "
                               f"failed: {exc}"[:2000], cause=OfflineCause.PROVISION_FAILED)
    first = next(iter(failed.values()))
    if len(failed) == 1 and isinstance(first, InfraError):
        raise first
    raise ProvisionError("; ".join(f"{exc}" for exc in failed.values()))


def power_off_build(ctx: BuildContext, cleanup_failed: Sequence[str]) -> list[str]:
    """The `power-off` step of every provisioned node, after the job's cleanup.

    Returns the nodes to take offline: static nodes whose cleanup failed, and
    provisioned nodes whose VM could not be turned off (a provisioned node's
    own cleanup does not matter: the next build reverts it anyway).
    """
    wanted = [n for n in ctx.nodes if n.provisioned]
    static_failed = [name for name in cleanup_failed
                     if name not in {n.name for n in wanted}]
    if not wanted:
        return static_failed

    def work(node: NodeConfig) -> None:
        with ctx.steps.step("power-off", node=node.name) as step:
            power_off(ctx.config, node, on_output=step.write)

    return static_failed + sorted(_each(wanted, work))
