"""Cleaning and checking a node outside a build: after its worker died, or before
`hyperv-ci nodes enable`.

A worker killed mid-build leaves its commands running on the nodes: OpenSSH
runs each command of a session without a terminal in a session of its own
(session.c `do_exec_no_pty` calls `setsid()`), and with no terminal no hangup
reaches it when the client goes away, so `stack.sh` or tempest go on and
would overlap the retry. The node is cleaned with its job's own cleanup
script (cleanup.sh ends the processes running from the job's directories and
unstacks; cleanup.ps1 stops the services and every process under the
Windows root), rendered for the build that left it dirty, then health-checked;
`ci.node_recovery.recovery_verdict` decides where it goes (docs/nodes.md).

A provisioned node (`provision: checkpoint`) is not cleaned: its VM is turned
off on its parent host, which ends everything the dead build left running on
it, and the next build reverts it to its clean checkpoint (runners/provision.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Literal

from sqlalchemy.orm import Session, sessionmaker

from ci import node_recovery, nodes
from ci.baseline import change_info_of
from ci.changes import ChangeInfo
from ci.config import Config, ConfigError, DevstackHypervJob, NodeConfig
from ci.errors import PermanentError
from ci.models import Build
from ci.node_recovery import Probe, Verdict
from runners.base import CommandTimeout, ExecutorError
from runners.health import check_node
from runners.job_values import RenderError
from runners.render import example_change, render_job

logger = logging.getLogger(__name__)

_PLACEHOLDER_REVISION = "0" * 40  # cleanup scripts do not use the revision


@dataclass(frozen=True)
class DirtyBuild:
    """The build whose leftovers a node holds: its job and change pick the cleanup."""

    job: str
    change: ChangeInfo


def dirty_build(sessions: sessionmaker[Session], build_id: int | None) -> DirtyBuild | None:
    """The build `build_id` as the cleanup needs it, or None when it is unknown."""
    if build_id is None:
        return None
    with sessions() as session:
        build = session.get(Build, build_id)
        if build is None:
            return None
        change = change_info_of(build)
        return DirtyBuild(build.job, replace(change, revision=_PLACEHOLDER_REVISION))


def _job_for(config: Config, node: NodeConfig,
             wanted: str | None) -> tuple[str, DevstackHypervJob] | None:
    """The devstack-hyperv job whose cleanup applies: the dirty build's, else the first."""
    names = ([wanted] if wanted else []) + list(config.jobs)
    for name in names:
        job = config.jobs.get(name)
        if isinstance(job, DevstackHypervJob) and node.label in ("devstack", "hyperv"):
            return name, job
    return None


def _render_nodes(config: Config, job: DevstackHypervJob, node: NodeConfig) -> list[NodeConfig]:
    """`node` plus configured (or documentation-address) nodes to make the job's set:
    rendering wants one controller and `hyperv_nodes` computes; only `node`'s files run."""
    chosen = [node]
    wanted: tuple[tuple[Literal["devstack", "hyperv"], int], ...] = (
        ("devstack", 1), ("hyperv", job.hyperv_nodes))
    for label, count in wanted:
        have = [n for n in chosen if n.label == label]
        others = [n for n in config.nodes if n.label == label and n.name != node.name]
        for extra in others[:max(0, count - len(have))]:
            chosen.append(extra)
            have.append(extra)
        for index in range(len(have), count):
            chosen.append(NodeConfig.model_construct(
                name=f"placeholder-{label}-{index}", label=label, address=f"192.0.2.{index + 1}"))
    return chosen


def _tail(text: str, lines: int = 1) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:])[:300]


def clean_node(config: Config, node: NodeConfig, dirty: DirtyBuild | None) -> Probe:
    """Run the job's cleanup on `node` alone; never raises."""
    found = _job_for(config, node, dirty.job if dirty else None)
    if found is None:
        return Probe(True, "no devstack-hyperv job uses this node: nothing to clean")
    job_name, job = found
    change = dirty.change if dirty else example_change(config, 1, 1)
    try:
        rendered = render_job(config, job_name, change, _render_nodes(config, job, node))
        if node.label == "hyperv":
            from runners.winrm import WinRMExecutor

            winrm = WinRMExecutor(node)
            try:
                result = winrm.run_powershell(rendered.for_node(node.name, "cleanup.ps1"),
                                              timeout=job.command_timeout, idempotent=True)
            finally:
                winrm.close()
        else:
            from runners.ssh import SSHExecutor

            script = rendered.file_for(node.name, "cleanup.sh")
            ssh = SSHExecutor(node)
            try:
                ssh.put(script.payload(), script.remote_path, 0o755)
                result = ssh.run(["bash", script.remote_path], timeout=job.command_timeout)
            finally:
                ssh.close()
    except (ExecutorError, CommandTimeout, RenderError, ConfigError, OSError, ValueError) as exc:
        return Probe(False, f"{type(exc).__name__}: {exc}")
    logger.info("node %s cleanup (job %s) exited %s:\n%s%s", node.name, job_name,
                result.exit_code, result.stdout[-4000:], result.stderr[-4000:])
    if not result.ok:
        return Probe(False, f"exit {result.exit_code}: {_tail(result.stderr or result.stdout)}")
    return Probe(True, _tail(result.stdout) or "cleaned")


def turn_off_node(config: Config, node: NodeConfig) -> tuple[Probe, Probe | None]:
    """A provisioned node's recovery: its VM is turned off, which ends every process
    the dead build left on it, and the next build reverts it to its clean
    checkpoint; the check is its parent host's (the VM and checkpoint exist)."""
    from runners.provision import ProvisionError, check_provisioned, power_off

    try:
        power_off(config, node)
    except ProvisionError as exc:
        return Probe(False, str(exc)), None
    healthy, message = check_provisioned(config, node)
    return Probe(True, "VM turned off; reverted before its next build"), Probe(healthy, message)


def clean_and_check(config: Config, node: NodeConfig,
                    dirty: DirtyBuild | None) -> tuple[Probe, Probe | None]:
    """The cleanup, then (only if it passed) a health check."""
    if node.provisioned:
        return turn_off_node(config, node)
    cleanup = clean_node(config, node, dirty)
    if not cleanup.ok:
        return cleanup, None
    healthy, message = check_node(node)
    return cleanup, Probe(healthy, message)


def recover_one(config: Config, sessions: sessionmaker[Session],
                task: node_recovery.RecoveryTask) -> Verdict:
    """Clean and check one claimed node, record the verdict; returns it."""
    node = next((n for n in config.nodes if n.name == task.name), None)
    if node is None:
        verdict = node_recovery.recovery_verdict(Probe(False, "not in this worker's configuration"),
                                        None, task.dirty_build_id)
    else:
        try:
            cleanup, check = clean_and_check(config, node,
                                             dirty_build(sessions, task.dirty_build_id))
        except Exception as exc:  # the node must leave `cleaning` whatever happened
            logger.exception("recovery of %s crashed", task.name)
            cleanup, check = Probe(False, f"{type(exc).__name__}: {exc}"), None
        verdict = node_recovery.recovery_verdict(cleanup, check, task.dirty_build_id)
    with sessions() as session, session.begin():
        node_recovery.finish_recovery(session, task.name, verdict)
    return verdict


def recover_nodes(config: Config, sessions: sessionmaker[Session],
                  holder: str) -> dict[str, Verdict]:
    """Claim every node waiting for recovery and recover them in parallel."""
    with sessions() as session, session.begin():
        tasks: Sequence[node_recovery.RecoveryTask] = node_recovery.claim_recovery(session, holder)
    if not tasks:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(tasks)),
                            thread_name_prefix="recovery") as workers:
        verdicts = list(workers.map(lambda t: recover_one(config, sessions, t), tasks))
    return {task.name: verdict for task, verdict in zip(tasks, verdicts, strict=True)}


class UnknownNode(PermanentError):
    """No such node in the configuration."""


def enable_node(config: Config, sessions: sessionmaker[Session], name: str) -> Verdict:
    """`hyperv-ci nodes enable NAME`: clean and check the node, then return it to the
    pool; a failed cleanup or check leaves it offline and says why (the verdict).

    Raises UnknownNode, or node_recovery.NodeBusy while a build or a recovery holds it.
    """
    node = next((n for n in config.nodes if n.name == name), None)
    if node is None:
        raise UnknownNode(f"no node {name!r} in the configuration")
    with sessions() as session, session.begin():
        # A fresh database knows no node yet.
        nodes.sync_nodes(session, config.nodes, config.lab_sets)
        task = node_recovery.claim_for_enable(session, name)
    if task is None:
        raise UnknownNode(f"no node {name!r}")
    try:
        cleanup, check = clean_and_check(config, node, dirty_build(sessions, task.dirty_build_id))
    except Exception as exc:  # the node must leave `cleaning` whatever happened
        logger.exception("cleaning %s for `nodes enable` crashed", name)
        cleanup, check = Probe(False, f"{type(exc).__name__}: {exc}"), None
    verdict = node_recovery.recovery_verdict(cleanup, check, task.dirty_build_id)
    if verdict.ready:
        verdict = Verdict(verdict.state, None, f"enabled by an operator: {verdict.message}")
    else:
        verdict = Verdict(verdict.state, verdict.cause,
                          f"`nodes enable` refused: {verdict.message}")
    with sessions() as session, session.begin():
        node_recovery.finish_recovery(session, name, verdict)
    return verdict
