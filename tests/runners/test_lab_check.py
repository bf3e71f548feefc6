"""`hyperv-ci lab check` against the simulated lab: every check PASSes on the lab as
it starts, and each one FAILs, with its fix, once its fault is injected.

One provisioned lab (controller, two Hyper-V node VMs on a parent host) for
the whole module; each fault test injects one fault, checks only the node it
concerns and takes the fault back.
"""

from __future__ import annotations

import copy
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ci.config import Config, parse_config
from runners.lab_check import CHECKS, LabCheckError, LabReport, run_lab_check
from runners.lab_verdict import CheckResult, Thresholds
from sim.lab import PARENT_HOST, SERVICE_ACCOUNT, WINRM_PASSWORD_ENV, WINRM_USER, SimLab
from sim.lab_probe import lab_state, set_controller_account
from sim.tls import TLSFiles, make_tls_files
from sim.winrm import SimWinRMServer

EVERY_CHECK = {"hv-1": CHECKS["windows"], "devstack-1": CHECKS["controller"],
               PARENT_HOST: CHECKS["parent"], "worker": CHECKS["worker"]}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimLab]:
    with SimLab(tmp_path_factory.mktemp("lab-check"), hyperv_nodes=2,
                provisioned=True) as started:
        yield started


def lab_data(lab: SimLab) -> dict[str, Any]:
    return {
        "gerrit": {"host": "127.0.0.1", "username": "ci", "key_file": "/nonexistent/key",
                   "known_hosts": "/nonexistent/known_hosts"},
        "projects": [{"name": "openstack/nova", "jobs": ["hyperv"]}],
        "jobs": {"hyperv": {"type": "devstack-hyperv", **lab.job_overrides()}},
        "nodes": lab.node_configs(),
        "parent_hosts": lab.parent_host_configs(),
    }


def by_check(report: LabReport) -> dict[tuple[str, str], list[bool]]:
    found: dict[tuple[str, str], list[bool]] = {}
    for result in report.results:
        found.setdefault((result.node, result.name), []).append(result.passed)
    return found


def test_the_simulated_lab_passes_every_check(lab: SimLab) -> None:
    report = run_lab_check(parse_config(lab_data(lab)))
    assert report.ok, "\n".join(report.lines())
    found = by_check(report)
    for node, checks in EVERY_CHECK.items():
        for check in checks:
            assert (node, check) in found, (node, check)
    assert ("hv-2", "msiscsi") in found
    # The parent checks each provisioned node's VM and its checkpoint.
    vms = [n for n in lab.node_configs() if n.get("provision") == "checkpoint"]
    assert len(vms) >= 2
    assert found[(PARENT_HOST, "checkpoint")] == [True] * len(vms)
    assert report.lines()[-1] == f"{len(report.results)} checks, 0 failed"
    # hv-1 resolved the other Hyper-V node it live-migrates with.
    hostname = next(r for r in report.results if (r.node, r.name) == ("hv-1", "hostname"))
    assert "peers hv-2 resolve" in hostname.detail


def test_named_nodes_only(lab: SimLab) -> None:
    report = run_lab_check(parse_config(lab_data(lab)), ["hv-2"])
    nodes = {r.node for r in report.results}
    # hv-2's own checks, and its VM on the parent (not hv-1's).
    assert nodes == {"hv-2", PARENT_HOST}
    assert sum(r.name == "vm" for r in report.results) == 1
    with pytest.raises(LabCheckError, match="no node or parent host 'hv-9'"):
        run_lab_check(parse_config(lab_data(lab)), ["hv-9"])


@dataclass
class Fault:
    """One fault: a change to the lab's state or to the configuration, and its undo."""

    node: str
    check: str
    fix: str  # a piece of the FAIL's fix
    inject: Callable[[SimLab, dict[str, Any]], Callable[[], None] | None]
    limits: Thresholds | None = None


def _state(attribute: str, value: object, node: str = "hv-1"
           ) -> Callable[[SimLab, dict[str, Any]], Callable[[], None]]:
    def inject(lab: SimLab, data: dict[str, Any]) -> Callable[[], None]:
        state = lab_state(lab.winrm[node].model if node != PARENT_HOST
                          else lab.parent.model)  # type: ignore[union-attr]
        old = copy.deepcopy(getattr(state, attribute))
        setattr(state, attribute, value)
        return lambda: setattr(state, attribute, old)
    return inject


def _host(mutate: Callable[[Any], Callable[[], None]]
          ) -> Callable[[SimLab, dict[str, Any]], Callable[[], None]]:
    return lambda lab, data: mutate(lab.winrm["hv-1"].model)


def _set(obj: Any, attribute: str, value: object) -> Callable[[], None]:
    old = copy.deepcopy(getattr(obj, attribute))
    setattr(obj, attribute, value)
    return lambda: setattr(obj, attribute, old)


def _item(mapping: Any, key: str, value: object) -> Callable[[], None]:
    old = copy.deepcopy(mapping[key])
    mapping[key] = value
    return lambda: mapping.__setitem__(key, old)


def _node(name: str, **changes: object) -> Callable[[SimLab, dict[str, Any]], None]:
    def inject(lab: SimLab, data: dict[str, Any]) -> None:
        entry = next(n for n in data["nodes"] if n["name"] == name)
        for key, value in changes.items():
            if isinstance(value, dict):
                entry[key].update(value)
            else:
                entry[key] = value
    return inject


def _job(**changes: object) -> Callable[[SimLab, dict[str, Any]], None]:
    def inject(lab: SimLab, data: dict[str, Any]) -> None:
        job = data["jobs"]["hyperv"]
        for key, value in changes.items():
            if isinstance(value, dict):
                job[key] = {**job.get(key, {}), **value}
            else:
                job[key] = value
    return inject


def _tool_url(key: str, url: Callable[[SimLab], str]
              ) -> Callable[[SimLab, dict[str, Any]], None]:
    def inject(lab: SimLab, data: dict[str, Any]) -> None:
        windows = data["jobs"]["hyperv"]["windows"]
        target = windows["tools"] if key in ("openstack_service", "qemu_img", "mkisofs") \
            else windows
        target[key] = {**target[key], "url": url(lab)}
    return inject


def _account(**changes: Any) -> Callable[[SimLab, dict[str, Any]], Callable[[], None]]:
    def inject(lab: SimLab, data: dict[str, Any]) -> Callable[[], None]:
        root = lab.state_dir / "devstack"
        set_controller_account(root, **changes)
        return lambda: set_controller_account(root)
    return inject


def _not_a_checkout_origin(lab: SimLab, data: dict[str, Any]) -> None:
    checkout = lab.state_dir / "git-devstack"
    checkout.mkdir(exist_ok=True)
    (checkout / "stack.sh").write_text("#!/bin/sh\n", encoding="utf-8")
    (checkout / "stack.sh").chmod(0o755)
    for argv in (["git", "init", "-q"], ["git", "remote", "add", "origin",
                                         str(lab.state_dir / "no-such-origin.git")]):
        subprocess.run(argv, cwd=checkout, check=False, capture_output=True)
    data["jobs"]["hyperv"]["devstack_dir"] = str(checkout)


def _empty_known_hosts(lab: SimLab, data: dict[str, Any]) -> None:
    empty = lab.state_dir / "empty_known_hosts"
    empty.write_text("", encoding="ascii")
    _node("devstack-1", ssh={"known_hosts": str(empty)})(lab, data)


def _drop_checkpoint(lab: SimLab, data: dict[str, Any]) -> Callable[[], None]:
    vm = lab.parent.vm("hv-1")  # type: ignore[union-attr]
    saved = vm.checkpoints.pop("clean")
    return lambda: vm.checkpoints.__setitem__("clean", saved)


FAULTS = {
    "winrm-refused": Fault("hv-1", "winrm", "listener",
                           _node("hv-1", winrm={"port": 9})),
    "winrm-secret-unset": Fault("hv-1", "winrm", "set the variable",
                                _node("hv-1", winrm={"password": {
                                    "password_env": "HYPERV_CI_TEST_UNSET_PASSWORD"}})),
    "winrm-https-listener-missing": Fault("hv-1", "winrm-transport", "-Transport HTTP",
                                          _state("listener", "HTTPS")),
    "powershell-4": Fault("hv-1", "powershell", "Management Framework 5.1",
                          _state("ps_version", "4.0")),
    "no-hyperv-role": Fault("hv-1", "hyperv-role", "Install-WindowsFeature -Name Hyper-V",
                            _host(lambda host: _set(host, "hyperv_role", False))),
    "vswitch-internal": Fault("hv-1", "vswitch", "New-VMSwitch",
                              _host(lambda host: _item(host.vswitches, "external", "Internal"))),
    "vswitch-on-another-adapter": Fault("hv-1", "vswitch-adapter", "Set-VMSwitch",
                                        _job(windows={"vswitch_adapter": "Ethernet 9"})),
    "data-nic-disconnected": Fault("hv-1", "data-network", "data network",
                                   _state("nic_status", "Disconnected")),
    "msiscsi-stopped": Fault("hv-1", "msiscsi", "Start-Service -Name MSiSCSI",
                             _host(lambda host: _item(host.system_services, "MSiSCSI",
                                                      ("Stopped", "Manual")))),
    "no-logon-right": Fault("hv-1", "service-account", "Log on as a service",
                            _host(lambda host: _set(host, "logon_right", set()))),
    "migration-disabled": Fault("hv-1", "migration", "Enable-VMMigration",
                                _host(lambda host: _item(host.migration, "enabled", False))),
    "instances-disk-full": Fault("hv-1", "instances-disk", "free space",
                                 _state("instances_free", 2 * 1024 ** 3)),
    "clock-skewed": Fault("hv-1", "clock", "w32tm /resync", _state("clock_offset", 600.0)),
    "python-unreachable": Fault("hv-1", "python", "{url, sha256}",
                                _tool_url("python_installer",
                                          lambda lab: "http://192.0.2.1/python.exe")),
    "tool-missing-on-server": Fault("hv-1", "tools", "{url, sha256}",
                                    _tool_url("qemu_img", lambda lab: "http://127.0.0.1:"
                                              f"{lab.artefacts.port}/missing-qemu-img.exe")),  # type: ignore[union-attr]
    "name-not-resolving": Fault("hv-1", "hostname", "DNS", _state("resolves", False)),
    "peer-not-resolving": Fault("hv-1", "hostname", "lab's DNS",
                                _state("unresolvable", {"hv-2"})),
    "wrong-host-name": Fault("hv-1", "hostname", "Rename-Computer",
                             _state("hostname", "WIN-8J2K4LQ")),
    "ssh-unknown-host-key": Fault("devstack-1", "ssh", "ssh-keyscan", _empty_known_hosts),
    "controller-as-root": Fault("devstack-1", "user", "useradd",
                                _account(user="root", uid=0)),
    "no-passwordless-sudo": Fault("devstack-1", "sudo", "NOPASSWD", _account(sudo=False)),
    "no-devstack": Fault("devstack-1", "devstack-checkout", "git clone",
                         _job(devstack_dir="/nonexistent/devstack")),
    "devstack-origin-gone": Fault("devstack-1", "devstack-branch", "remote set-url",
                                  _not_a_checkout_origin),
    "no-data-interface": Fault("devstack-1", "data-interface", "ip -br link",
                               _node("devstack-1", data_interface="hvci-nope0")),
    "controller-disk": Fault("devstack-1", "disk", "grow the disk", lambda lab, data: None,
                             Thresholds(controller_free_gib=10.0 ** 9)),
    "controller-memory": Fault("devstack-1", "memory", "more memory", lambda lab, data: None,
                               Thresholds(controller_memory_gib=10.0 ** 9)),
    "no-vm": Fault(PARENT_HOST, "vm", "create the VM", _node("hv-1", vm="hv-1-gone")),
    "no-checkpoint": Fault(PARENT_HOST, "checkpoint", "Checkpoint-VM", _drop_checkpoint),
    "no-nested-virtualization": Fault(PARENT_HOST, "nested-virtualization",
                                      "-ExposeVirtualizationExtensions $true",
                                      _state("nested", {"hv-1": False}, node=PARENT_HOST)),
    "no-mac-address-spoofing": Fault(PARENT_HOST, "mac-address-spoofing", "-MacAddressSpoofing On",
                                     _state("mac_spoofing", {"hv-1": "Off"}, node=PARENT_HOST)),
    "worker-file-missing": Fault("worker", "worker-files", "readable",
                                 _node("hv-1", winrm={"ca_file": "/nonexistent/ca.pem"})),
}


@pytest.mark.parametrize("fault", list(FAULTS.values()), ids=list(FAULTS))
def test_each_fault_fails_its_check_with_the_fix(lab: SimLab, fault: Fault) -> None:
    data = lab_data(lab)
    undo = fault.inject(lab, data)
    try:
        config: Config = parse_config(data)
        names = [] if fault.node == "worker" else ["hv-1" if fault.node == PARENT_HOST
                                                    else fault.node]
        report = run_lab_check(config, names, limits=fault.limits)
    finally:
        if undo is not None:
            undo()
    failures = [r for r in report.results if not r.passed]
    mine = [r for r in failures if (r.node, r.name) == (fault.node, fault.check)]
    assert mine, "\n".join(report.lines())
    assert fault.fix in mine[0].fix, mine[0]
    assert not report.ok


def test_node_text_is_escaped_for_the_terminal(lab: SimLab) -> None:
    undo = _state("hostname", "evil\x1b[2J名前")(lab, {})
    try:
        report = run_lab_check(parse_config(lab_data(lab)), ["hv-1"])
    finally:
        undo()
    line = next(line for line in report.lines() if " hostname " in line)
    assert "\x1b" not in line and "\\x1b[2J名前" in line
    assert report.to_json().count("名前") == 1  # JSON keeps the text as it is


def test_services_account_must_exist(lab: SimLab) -> None:
    undo = _state("accounts", {}, node="hv-2")(lab, {})
    try:
        report = run_lab_check(parse_config(lab_data(lab)), ["hv-2"])
    finally:
        undo()
    result = next(r for r in report.results if r.name == "service-account")
    assert not result.passed and SERVICE_ACCOUNT in result.detail
    assert "domain" in result.fix


def test_a_probe_that_cannot_run_is_one_winrm_failure(lab: SimLab, tmp_path: Path) -> None:
    lab.winrm["hv-2"].faults.set("lab-probe", exit_code=1, stderr="Get-WindowsFeature : boom",
                                 times=1)
    report = run_lab_check(parse_config(lab_data(lab)), ["hv-2"])
    [mine] = [r for r in report.results if r.node == "hv-2"]
    assert (mine.name, mine.passed) == ("winrm", False)
    assert "boom" in mine.detail and "PowerShell's" in mine.fix


@pytest.fixture
def tls_node(lab: SimLab, tmp_path: Path) -> Iterator[tuple[SimWinRMServer, TLSFiles, TLSFiles]]:
    """A node with an HTTPS listener only (certificate of `mine`), and another CA."""
    mine, other = make_tls_files(tmp_path / "tls"), make_tls_files(tmp_path / "other")
    server = SimWinRMServer("hv-tls", lab.lab_dir, WINRM_USER, os.environ[WINRM_PASSWORD_ENV],
                            tls=(mine.cert, mine.key))
    with server:
        yield server, mine, other


def tls_check(lab: SimLab, server: SimWinRMServer, **winrm: object) -> dict[str, CheckResult]:
    data = lab_data(lab)
    data["nodes"].append({"name": "hv-tls", "label": "hyperv", "address": "127.0.0.1",
                          "winrm": {"scheme": "https", "port": server.port, "username": WINRM_USER,
                                    "password": {"password_env": WINRM_PASSWORD_ENV},
                                    "operation_timeout": 2, "read_timeout": 5, **winrm}})
    report = run_lab_check(parse_config(data), ["hv-tls"])
    return {r.name: r for r in report.results}


def test_https_certificate_checked_against_the_configured_ca(
        lab: SimLab, tls_node: tuple[SimWinRMServer, TLSFiles, TLSFiles]) -> None:
    server, mine, other = tls_node
    good = tls_check(lab, server, ca_file=str(mine.ca_cert))
    assert good["winrm"].passed and good["winrm-transport"].passed, good
    assert "TLS" in good["winrm-transport"].detail
    wrong = tls_check(lab, server, ca_file=str(other.ca_cert))
    assert list(wrong) == ["winrm"] and not wrong["winrm"].passed
    assert "certificate" in wrong["winrm"].fix
    unchecked = tls_check(lab, server, verify_certificate=False)
    assert unchecked["winrm"].passed and not unchecked["winrm-transport"].passed
    assert "ca_file" in unchecked["winrm-transport"].fix


def test_a_provisioned_node_whose_vm_is_off_is_skipped(lab: SimLab) -> None:
    vm = lab.parent.vm("hv-2")  # type: ignore[union-attr]
    vm.turn_off()  # as after a build: the CI turns each VM off until the next revert
    try:
        report = run_lab_check(parse_config(lab_data(lab)), ["hv-2"])
    finally:
        vm.start()
    assert report.ok, "\n".join(report.lines())
    [mine] = [r for r in report.results if r.node == "hv-2"]
    assert mine.skipped and "is Off" in mine.detail and "Restore-VMSnapshot" in mine.fix
    assert any(r.node == PARENT_HOST and r.name == "checkpoint" and r.passed
               for r in report.results)
    lines = report.lines()
    assert any(line.startswith("SKIP  hv-2 ") for line in lines)
    assert lines[-1].endswith("0 failed, 1 skipped")
