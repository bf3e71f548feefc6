"""Node health checks: can the CI still reach and drive each idle node?

A check is the cheapest real round trip over the node's own protocol: `true`
over SSH for a Linux node, `$PSVersionTable.PSVersion` over WinRM for a
Windows node. Results go through `runners.pool.record_health`, which takes a
node offline after repeated failures and brings it back after a success, but
only if health checks took it offline: a node whose cleanup failed stays
offline until an operator enables it, and one whose worker was lost is left
to the recovery (runners/recovery.py), which checks it after cleaning it.

One process checks the pool per interval, whatever the number of workers:
every worker asks for the turn (`ci.leases.take_turn`), one gets it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci.config import Config, ConfigError, NodeConfig
from ci.leases import HEALTH_CHECKS, take_turn
from ci.models import Node, NodeState, OfflineCause
from runners.base import CommandTimeout, ExecutorError
from runners.pool import record_health

logger = logging.getLogger(__name__)

CHECK_TIMEOUT = 30.0
# The first line names the step for the simulated node (and for anyone reading a transcript).
PS_CHECK = "# hyperv-ci-step: health\n$v = $PSVersionTable.PSVersion\nWrite-Output \"$v\"\n"


def _check_ssh(node: NodeConfig, timeout: float) -> tuple[bool, str]:
    from runners.ssh import SSHExecutor

    executor = SSHExecutor(node, connect_timeout=timeout)
    try:
        result = executor.run(["true"], timeout=timeout)
    finally:
        executor.close()
    if not result.ok:
        return False, f"ssh: `true` exited {result.exit_code}"
    return True, "ssh ok"


def _check_winrm(node: NodeConfig, timeout: float) -> tuple[bool, str]:
    from runners.winrm import WinRMExecutor

    executor = WinRMExecutor(node)
    try:
        result = executor.run_powershell(PS_CHECK, timeout=timeout, idempotent=False, retries=0)
    finally:
        executor.close()
    if not result.ok:
        detail = result.stderr.strip().splitlines()[-1:] or [""]
        return False, f"winrm: PowerShell exited {result.exit_code} {detail[0]}".strip()
    version = result.stdout.strip().splitlines()[-1:] or ["?"]
    return True, f"winrm ok, PowerShell {version[0]}"


def check_node(node: NodeConfig, timeout: float = CHECK_TIMEOUT) -> tuple[bool, str]:
    """One round trip to `node`; (healthy, a short message for the operator). Never raises."""
    try:
        if node.winrm is not None:
            return _check_winrm(node, timeout)
        if node.ssh is not None:
            return _check_ssh(node, timeout)
        return False, "no ssh or winrm section"
    except (ExecutorError, CommandTimeout, ConfigError, OSError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a health check must report, not crash the worker's loop
        logger.exception("health check of %s crashed", node.name)
        return False, f"{type(exc).__name__}: {exc}"


def _check(config: Config, node: NodeConfig, timeout: float) -> tuple[bool, str]:
    """A static node answers itself; a provisioned one is off between builds, so its
    parent host is asked for the VM and its checkpoint (runners/provision.py)."""
    if node.provisioned:
        from runners.provision import check_provisioned

        return check_provisioned(config, node)
    return check_node(node, timeout)


def _idle_nodes(sessions: sessionmaker[Session], nodes: Sequence[NodeConfig]) -> list[NodeConfig]:
    """Nodes not held by a build nor by a recovery (which checks them itself):
    a running job must not share its node with a check."""
    with sessions() as session:
        busy = set(session.scalars(select(Node.name).where(
            Node.build_id.is_not(None) | (Node.state == NodeState.CLEANING)
            | (Node.offline_cause == OfflineCause.WORKER_LOST))))
    return [n for n in nodes if n.name not in busy]


def health_round(config: Config, sessions: sessionmaker[Session], holder: str,
                 timeout: float = CHECK_TIMEOUT) -> dict[str, tuple[bool, str]] | None:
    """Check the pool if this process gets the interval's turn; None if another has it."""
    with sessions() as session, session.begin():
        mine = take_turn(session, HEALTH_CHECKS, holder, config.worker.health_interval)
    if not mine:
        return None
    return run_health_checks(config, sessions, timeout)


def run_health_checks(config: Config, sessions: sessionmaker[Session],
                      timeout: float = CHECK_TIMEOUT) -> dict[str, tuple[bool, str]]:
    """Check every idle configured node in parallel and record each result; returns them."""
    nodes = _idle_nodes(sessions, config.nodes)
    if not nodes:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(nodes)),
                            thread_name_prefix="health") as pool:
        results = dict(zip([n.name for n in nodes],
                           pool.map(lambda n: _check(config, n, timeout), nodes), strict=True))
    with sessions() as session, session.begin():
        for name, (healthy, message) in results.items():
            record_health(session, name, healthy, message)
            if not healthy:
                logger.warning("node %s failed its health check: %s", name, message)
    return results
