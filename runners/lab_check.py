"""`hyperv-ci lab check`: probe every node and parent host of a lab, report each check.

The I/O of the lab preflight: one PowerShell probe per Windows node and per
parent host (rendered from runners/templates/lab-*.ps1.j2, which the
PowerShell check accepts), one fixed sh probe over SSH per controller, the
worker's own files (ci/preflight.py). The verdicts are pure functions in
runners/lab_facts*.py. Nodes are probed in parallel; a node that cannot be
reached gets one FAIL (its connection) instead of its other checks.
"""

from __future__ import annotations

import json
import logging
import time
import unicodedata
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from ci.config import Config, ConfigError, DevstackHypervJob, NodeConfig, ParentHostConfig
from ci.errors import HypervCIError
from ci.preflight import worker_problems
from runners.base import CommandTimeout, ExecutorError
from runners.lab_facts import parse_windows_facts, windows_verdicts
from runners.lab_facts_controller import (
    controller_probe_argv,
    controller_verdicts,
    parse_controller_facts,
    ssh_failure,
)
from runners.lab_facts_parent import parent_verdicts, parse_parent_facts
from runners.lab_verdict import (
    CheckResult,
    ProbeError,
    Thresholds,
    clock_verdict,
    failed,
    passed,
    skipped,
    winrm_failure,
)
from runners.render import make_environment

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

PROBE_TIMEOUT = 120.0
WORKER = "worker"  # the node name of the checks on the worker host itself


# Every check, by the kind of machine it runs on (docs/lab.md lists them for operators).
CHECKS: dict[str, tuple[str, ...]] = {
    "windows": ("winrm", "winrm-transport", "powershell", "hyperv-role", "vswitch",
                "vswitch-adapter", "data-network", "msiscsi", "service-account", "migration",
                "instances-disk", "clock", "python", "tools", "hostname"),
    "controller": ("ssh", "user", "sudo", "devstack-checkout", "devstack-branch",
                   "data-interface", "disk", "memory"),
    "parent": ("winrm", "clock", "vm", "checkpoint", "nested-virtualization",
               "mac-address-spoofing"),
    "worker": ("worker-files",),
}


class LabCheckError(HypervCIError):
    """The check cannot start: no devstack-hyperv job, or an unknown node name."""


@dataclass
class LabReport:
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.passed for r in self.results)

    def lines(self) -> list[str]:
        """One line per check, and an indented `fix:` line under each FAIL."""
        out = []
        for r in self.results:
            status = "SKIP" if r.skipped else "PASS" if r.passed else "FAIL"
            out.append(f"{status}  {r.node:<16} {r.name:<22} {printable(r.detail)}")
            if not r.passed:
                out.append(f"      fix: {printable(r.fix)}")
            elif r.skipped:
                out.append(f"      to check it: {printable(r.fix)}")
        failures = sum(not r.passed for r in self.results)
        skips = sum(r.skipped for r in self.results)
        out.append(f"{len(self.results)} checks, {failures} failed"
                   + (f", {skips} skipped" if skips else ""))
        return out

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, "checks": [r.to_dict() for r in self.results]},
                          ensure_ascii=False, indent=2)


def printable(text: str) -> str:
    """Text from a node (host names, error messages) with control characters escaped:
    it goes to an operator's terminal."""
    return "".join(c if unicodedata.category(c)[0] != "C" else f"\\x{ord(c):02x}"
                   for c in text)


def pick_job(config: Config, name: str | None) -> tuple[str, DevstackHypervJob]:
    """The devstack-hyperv job whose settings the nodes are checked against."""
    jobs = {n: j for n, j in config.jobs.items() if isinstance(j, DevstackHypervJob)}
    if name is not None:
        if name not in jobs:
            raise LabCheckError(f"no devstack-hyperv job {name!r} (jobs: "
                                f"{', '.join(jobs) or 'none'})")
        return name, jobs[name]
    if not jobs:
        raise LabCheckError("the configuration has no devstack-hyperv job to check nodes for")
    first = next(iter(jobs))
    return first, jobs[first]


def migration_peers(config: Config, node: NodeConfig) -> list[str]:
    """The Hyper-V nodes `node` may live-migrate with: its lab set's others, or every
    other Hyper-V node when no lab sets are configured."""
    for lab_set in config.lab_sets:
        if node.name in lab_set.hyperv:
            return [name for name in lab_set.hyperv if name != node.name]
    return [n.name for n in config.nodes if n.label == "hyperv" and n.name != node.name]


def render_windows_probe(node: NodeConfig, job: DevstackHypervJob,
                         peers: Sequence[str] = ()) -> str:
    urls = {key: artefact.url for key, artefact in job.windows.artefacts().items()
            if artefact is not None and artefact.url}
    account = job.windows.service_account
    return make_environment().get_template("lab-probe.ps1.j2").render(
        node=node, job=job, service_user=account.username if account else "", urls=urls,
        peers=list(peers))


def render_parent_probe(vms: Sequence[str]) -> str:
    return make_environment().get_template("lab-parent-probe.ps1.j2").render(vms=list(vms))


def _run_powershell(node: NodeConfig, script: str, timeout: float) -> tuple[str, float]:
    """(stdout, the worker's clock in the middle of the command) or ExecutorError."""
    from runners.winrm import WinRMExecutor

    executor = WinRMExecutor(node)
    try:
        before = time.time()
        result = executor.run_powershell(script, timeout=timeout, retries=0)
        after = time.time()
    finally:
        executor.close()
    if not result.ok:
        last = (result.stderr.strip().splitlines() or [""])[-1]
        raise ExecutorError(f"the probe exited {result.exit_code}: {last}")
    return result.stdout, (before + after) / 2


def check_windows(node: NodeConfig, job: DevstackHypervJob, limits: Thresholds,
                  timeout: float = PROBE_TIMEOUT, peers: Sequence[str] = ()) -> list[CheckResult]:
    try:
        stdout, worker_clock = _run_powershell(node, render_windows_probe(node, job, peers),
                                               timeout)
        facts = parse_windows_facts(stdout)
    except (ExecutorError, CommandTimeout, ProbeError, ConfigError, OSError) as exc:
        return [winrm_failure(node, str(exc))]
    skew = facts.unix_ms / 1000 - worker_clock
    access = node.winrm
    assert access is not None
    head = passed("winrm", node.name, f"{access.transport} over {access.scheme} to "
                  f"{node.address}:{access.endpoint_port}")
    return [head, *windows_verdicts(node, job, facts, skew, limits)]


def check_controller(node: NodeConfig, job: DevstackHypervJob, limits: Thresholds,
                     timeout: float = PROBE_TIMEOUT) -> list[CheckResult]:
    from runners.ssh import SSHExecutor

    executor = SSHExecutor(node, connect_timeout=min(timeout, 15.0))
    try:
        result = executor.run(controller_probe_argv(job, node), timeout=timeout)
    except (ExecutorError, CommandTimeout) as exc:
        return [ssh_failure(node, exc)]
    finally:
        executor.close()
    try:
        facts = parse_controller_facts(result.stdout)
    except ProbeError as exc:
        return [failed("probe", node.name, f"{exc} (exit {result.exit_code}: "
                       f"{result.stderr.strip()[-200:]})",
                       "the controller needs a POSIX sh, coreutils, awk and /proc")]
    return controller_verdicts(node, job, facts, limits)


@dataclass(frozen=True)
class ParentOutcome:
    results: list[CheckResult]
    vm_states: dict[str, str]  # node name -> its VM's state (Hyper-V's VMState), if known


def check_parent(parent: ParentHostConfig, nodes: list[NodeConfig], limits: Thresholds,
                 timeout: float = PROBE_TIMEOUT) -> ParentOutcome:
    host = parent.as_node()
    try:
        stdout, worker_clock = _run_powershell(
            host, render_parent_probe([n.vm_name for n in nodes]), timeout)
        module, unix_ms, vms = parse_parent_facts(stdout)
    except (ExecutorError, CommandTimeout, ProbeError, ConfigError, OSError) as exc:
        return ParentOutcome([winrm_failure(host, str(exc))], {})
    access = parent.winrm
    head = passed("winrm", parent.name, f"{access.transport} over {access.scheme} to "
                  f"{parent.address}:{access.endpoint_port}")
    states = {n.name: vms[n.vm_name.lower()].state for n in nodes
              if n.vm_name.lower() in vms and vms[n.vm_name.lower()].exists}
    return ParentOutcome([head, clock_verdict(parent.name, unix_ms / 1000 - worker_clock,
                                              limits.max_clock_skew),
                          *parent_verdicts(parent.name, module, nodes, vms)], states)


def vm_off(node: NodeConfig, state: str) -> CheckResult:
    """A provisioned node whose VM is not running: between builds that is how it waits."""
    login = "WinRM" if node.label == "hyperv" else "SSH"
    return skipped("node", node.name, f"its VM {node.vm_name!r} on {node.parent} is {state} "
                   f"(reverted and started for each build): its own checks need {login}",
                   f"drain it (hyperv-ci nodes drain {node.name}), then on {node.parent}: "
                   f"Restore-VMSnapshot -VMName '{node.vm_name}' -Name '{node.checkpoint}' "
                   f"-Confirm:$false; Start-VM -Name '{node.vm_name}'; hyperv-ci lab check "
                   f"{node.name}; Stop-VM -Name '{node.vm_name}' -TurnOff; undrain it")


def _worker_files(config: Config) -> list[CheckResult]:
    problems = worker_problems(config)
    if problems:
        return [failed("worker-files", WORKER, "; ".join(str(p) for p in problems),
                       "make each named file exist and readable by the worker's user")]
    return [passed("worker-files", WORKER, "every key, known_hosts, CA, password file and "
                   "uploaded tool the configuration names is readable")]


def run_lab_check(config: Config, names: Sequence[str] = (), *, job_name: str | None = None,
                  limits: Thresholds | None = None,
                  timeout: float = PROBE_TIMEOUT) -> LabReport:
    """Check the named nodes and parent hosts (all of them when `names` is empty)."""
    limits = limits or Thresholds()
    _, job = pick_job(config, job_name)
    parents = {p.name: p for p in config.parent_hosts}
    known = {n.name for n in config.nodes} | set(parents)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise LabCheckError(f"no node or parent host {', '.join(map(repr, unknown))} "
                            f"(known: {', '.join(sorted(known))})")
    wanted = set(names)
    nodes = [n for n in config.nodes if not wanted or n.name in wanted]
    # The parent hosts first: a provisioned node whose VM is off is not probed.
    parent_tasks: list[Callable[[], ParentOutcome]] = []
    for parent in parents.values():
        # A parent is checked for the VMs of the selected nodes, or all of its VMs when named.
        carried = [n for n in config.nodes if n.parent == parent.name
                   and (not wanted or parent.name in wanted or n.name in wanted)]
        if carried or not wanted or parent.name in wanted:
            parent_tasks.append(partial(check_parent, parent, carried, limits, timeout))
    outcomes = _in_parallel(parent_tasks)
    vm_states = {name: state for o in outcomes for name, state in o.vm_states.items()}
    tasks: list[Callable[[], list[CheckResult]]] = []
    if not wanted:
        tasks.append(partial(_worker_files, config))
    for node in nodes:
        state = vm_states.get(node.name, "Running")
        if node.provisioned and state != "Running":
            tasks.append(partial(lambda n, s: [vm_off(n, s)], node, state))
        elif node.label == "hyperv":
            tasks.append(partial(check_windows, node, job, limits, timeout,
                                 migration_peers(config, node)))
        else:
            tasks.append(partial(check_controller, node, job, limits, timeout))
    report = LabReport()
    for results in _in_parallel(tasks):
        report.results.extend(results)
    for outcome in outcomes:
        report.results.extend(outcome.results)
    return report


def _in_parallel(tasks: Sequence[Callable[[], _T]]) -> list[_T]:
    if not tasks:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(tasks)),
                            thread_name_prefix="lab-check") as pool:
        return list(pool.map(lambda task: task(), tasks))
