"""The WinRM executor closes every shell it opens, so a node's MaxShellsPerUser never fills.

A default Windows Server 2022 node allows one user 30 concurrent shells and
deletes a forgotten one only after its IdleTimeout (2 hours): an executor that
leaked a shell on some path would lock the CI out of the node a few dozen
builds later. These run against the simulated node with those defaults.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from winrm.exceptions import WSManFaultError
from winrm.protocol import Protocol

from runners.base import CommandAborted, CommandTimeout, ExecutorError
from runners.winrm import WinRMExecutor
from sim.winrm import SimWinRMServer
from sim.wsman_xml import FAULT_QUOTA_MAX_SHELLS
from tests.runners import test_winrm as base
from tests.runners.test_winrm import PASSWORD, USER, Node, node_for

# The executor tests' fixtures: a node per transport (NTLM over http, Basic over https).
tls, sim, executor, password_env = base.tls, base.sim, base.executor, base.password_env

Path_ = Callable[[Node, WinRMExecutor, Path], None]


def _success(sim: Node, ex: WinRMExecutor, tmp: Path) -> None:
    assert ex.run_powershell("# hyperv-ci-step: probe\n", timeout=10).ok


def _non_zero_exit(sim: Node, ex: WinRMExecutor, tmp: Path) -> None:
    sim.faults.set("start-services", exit_code=3, stderr="failed", times=1)
    assert ex.run_powershell("# hyperv-ci-step: start-services\n", timeout=10).exit_code == 3


def _parse_error(sim: Node, ex: WinRMExecutor, tmp: Path) -> None:
    assert ex.run_powershell("# hyperv-ci-step: install\nif ($x) {\n", timeout=10).exit_code == 1


def _timeout(sim: Node, ex: WinRMExecutor, tmp: Path) -> None:
    sim.faults.set("install", hang=True, times=1)
    with pytest.raises(CommandTimeout):
        ex.run_powershell("# hyperv-ci-step: install\n", timeout=1)


def _abort(sim: Node, ex: WinRMExecutor, tmp: Path) -> None:
    sim.faults.set("install", hang=True, stdout="started", times=1)
    seen = threading.Event()
    with pytest.raises(CommandAborted):
        ex.run_powershell("# hyperv-ci-step: install\n", timeout=60,
                          on_output=lambda _text: seen.set(), should_stop=seen.is_set)


def _dropped(sim: Node, ex: WinRMExecutor, tmp: Path) -> None:
    # The connection is reset mid-command: a transport error, and a shell still open.
    sim.faults.set("install", drop=True, times=1)
    with pytest.raises(ExecutorError):
        ex.run_powershell("# hyperv-ci-step: install\n", timeout=10)


def _dropped_then_retried(sim: Node, ex: WinRMExecutor, tmp: Path) -> None:
    sim.faults.set("install", drop=True, times=1)
    assert ex.run_powershell("# hyperv-ci-step: install\n", timeout=10, idempotent=True).ok


def _put_get(sim: Node, ex: WinRMExecutor, tmp: Path) -> None:
    ex.put("实例 Zoë\r\n".encode(), "C:\\OpenStack\\etc\\nova.conf")
    ex.get("C:\\OpenStack\\etc\\nova.conf", tmp / "nova.conf")


def _get_missing(sim: Node, ex: WinRMExecutor, tmp: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ex.get("C:\\OpenStack\\logs\\missing.log", tmp / "missing.log")


PATHS: dict[str, Path_] = {
    "success": _success, "non-zero-exit": _non_zero_exit, "parse-error": _parse_error,
    "timeout": _timeout, "abort": _abort, "dropped": _dropped,
    "dropped-then-retried": _dropped_then_retried, "put-get": _put_get,
    "get-missing": _get_missing,
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_every_path_closes_its_shell(sim: Node, executor: WinRMExecutor, tmp_path: Path,
                                     path: str) -> None:
    PATHS[path](sim, executor, tmp_path)
    assert sim.open_shells == 0
    assert sim.stats["Delete"] == sim.stats["Create"] > 0


@pytest.fixture
def one_node(tmp_path: Path) -> Iterator[SimWinRMServer]:
    """One node as Windows Server 2022 ships it (MaxShellsPerUser 30), NTLM over http."""
    now = [0.0]
    node = Node("hv-1", tmp_path / "lab", USER, PASSWORD, clock=lambda: now[0])
    node.clock_now = now  # type: ignore[attr-defined]
    with node:
        yield node


def test_more_than_30_builds_on_one_node(one_node: Node, password_env: str,
                                         tmp_path: Path) -> None:
    # What a devstack-hyperv build asks of each Windows node (its steps, an upload and a
    # download: 11 shells a node in a full build), with one of the failure paths in
    # every build: 31 builds, over 250 shells on one node with a quota of 30.
    ex = WinRMExecutor(node_for(one_node, password_env), backoff=0.01)
    failures = ["non-zero-exit", "dropped", "get-missing", "parse-error", "abort",
                "dropped-then-retried"]
    try:
        for build in range(31):
            for step in ("teardown", "bootstrap", "install", "configure-services",
                         "start-services", "collect-logs"):
                one_node.faults.set(step, stdout=f"{step} ok", exit_code=0, times=1)
                assert ex.run_powershell(f"# hyperv-ci-step: {step}\n", timeout=10).ok
            _put_get(one_node, ex, tmp_path)
            # A timeout costs a second: every tenth build has one.
            PATHS["timeout" if build % 10 == 9 else failures[build % len(failures)]](
                one_node, ex, tmp_path)
            assert one_node.open_shells == 0, f"build {build} left a shell open"
    finally:
        ex.close()
    assert one_node.stats["Create"] > 250
    assert one_node.stats[f"Create.fault.{FAULT_QUOTA_MAX_SHELLS}"] == 0


def test_a_client_that_leaks_shells_hits_the_quota(one_node: Node, password_env: str) -> None:
    leaky = Protocol(one_node.url, transport="ntlm", username=USER, password=PASSWORD,
                     operation_timeout_sec=1, read_timeout_sec=3)
    for _ in range(30):
        leaky.open_shell()  # and never closed
    with pytest.raises(WSManFaultError) as info:
        leaky.open_shell()  # the 31st
    assert info.value.wsman_fault_code == FAULT_QUOTA_MAX_SHELLS
    # The CI's executor is locked out of the node too, and says why.
    ex = WinRMExecutor(node_for(one_node, password_env), backoff=0.01)
    with pytest.raises(ExecutorError, match="MaxShellsPerUser"):
        ex.run_powershell("# hyperv-ci-step: probe\n", timeout=10)
    # Until the node's IdleTimeout (2 hours) deletes the forgotten shells.
    one_node.clock_now[0] += 2 * 3600  # type: ignore[attr-defined]
    assert ex.run_powershell("# hyperv-ci-step: probe\n", timeout=10).ok
    assert one_node.open_shells == 0
    ex.close()
