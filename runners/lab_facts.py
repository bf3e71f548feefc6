"""Verdicts of `hyperv-ci lab check` on a Windows Hyper-V node: pure functions.

The node's probe (runners/templates/lab-probe.ps1.j2) prints what it found as
one JSON line; `parse_windows_facts` reads it into a typed record and
`windows_verdicts` turns it into one `CheckResult` per check, each FAIL with
the command or setting that fixes it. The controller's and the parent hosts'
verdicts are in runners/lab_facts_controller.py and runners/lab_facts_parent.py,
what they share in runners/lab_verdict.py; the I/O is in runners/lab_check.py.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from ci.config import DevstackHypervJob, NodeConfig
from runners.lab_verdict import (
    GIB,
    CheckResult,
    ProbeError,
    Thresholds,
    clock_verdict,
    failed,
    listify,
    passed,
    tagged_json,
)


@dataclass(frozen=True)
class WindowsFacts:
    """What the probe found on a Windows node (property names as the cmdlets give them)."""

    unix_ms: int
    ps_version: str
    hostname: str
    resolved: list[str]
    peers: dict[str, list[str]]  # each migration peer's addresses as the node resolves it
    winrm_basic: bool
    winrm_allow_unencrypted: bool
    winrm_listeners: list[str]
    hyperv_feature: str
    hyperv_module: bool
    adapters: list[dict[str, str]]
    ipv4: list[dict[str, Any]]
    vswitch: dict[str, str] | None
    vmhost: dict[str, Any] | None
    msiscsi: dict[str, str] | None
    account_sid: str
    logon_right: bool
    instances_drive: str
    instances_free: int
    files: dict[str, bool]
    downloads: dict[str, str] = field(default_factory=dict)


def _flag(value: object) -> bool:
    # WSMan: settings are strings ("true"/"false"); ConvertTo-Json keeps them so.
    return str(value).strip().lower() == "true"


def parse_windows_facts(stdout: str) -> WindowsFacts:
    data = tagged_json(stdout)
    try:
        return WindowsFacts(
            unix_ms=int(data["unix_ms"]), ps_version=str(data["ps_version"]),
            hostname=str(data["hostname"]), resolved=[str(a) for a in listify(data["resolved"])],
            peers={str(k): [str(a) for a in listify(v)]
                   for k, v in dict(data.get("peers") or {}).items()},
            winrm_basic=_flag(data["winrm_basic"]),
            winrm_allow_unencrypted=_flag(data["winrm_allow_unencrypted"]),
            winrm_listeners=[str(x) for x in listify(data["winrm_listeners"])],
            hyperv_feature=str(data["hyperv_feature"]), hyperv_module=bool(data["hyperv_module"]),
            adapters=listify(data["adapters"]), ipv4=listify(data["ipv4"]),
            vswitch=data["vswitch"], vmhost=data["vmhost"], msiscsi=data["msiscsi"],
            account_sid=str(data["account_sid"] or ""), logon_right=bool(data["logon_right"]),
            instances_drive=str(data["instances_drive"]),
            instances_free=int(data["instances_free"]),
            files={str(k): bool(v) for k, v in dict(data["files"]).items()},
            downloads={str(k): str(v) for k, v in dict(data.get("downloads") or {}).items()},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProbeError(f"the probe's facts lack or garble {exc}") from None


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def winrm_transport_verdict(node: NodeConfig, facts: WindowsFacts) -> CheckResult:
    """The node's WinRM service allows what the configuration uses, and no less."""
    access = node.winrm
    assert access is not None  # a hyperv node has a winrm section (config validation)
    name = "winrm-transport"
    scheme = access.scheme.upper()
    # Each listener's Keys, e.g. "Transport=HTTPS Address=*" (WSMan:\localhost\Listener).
    keys = [set(x.upper().split()) for x in facts.winrm_listeners]
    if not any(f"TRANSPORT={scheme}" in k for k in keys):
        port = access.endpoint_port
        return failed(name, node.name, f"no {scheme} listener (listeners: "
                      f"{', '.join(facts.winrm_listeners) or 'none'})",
                      f"New-Item -Path WSMan:\\localhost\\Listener -Address * -Transport {scheme} "
                      f"... (port {port}; docs/winrm.md, 'The listener')")
    basic = access.transport in ("basic", "ssl", "plaintext")
    if basic and not facts.winrm_basic:
        return failed(name, node.name, f"transport {access.transport} needs Basic, which the "
                      "node refuses (Service\\Auth\\Basic false)",
                      "winrm set winrm/config/service/auth '@{Basic=\"true\"}' on the node, or "
                      "use transport: ntlm")
    unencrypted = basic and access.scheme == "http"
    if unencrypted and not facts.winrm_allow_unencrypted:
        return failed(name, node.name, "Basic over http sends everything unencrypted, which "
                      "the node refuses (Service\\AllowUnencrypted false)",
                      "use scheme: https (or transport: ntlm, which encrypts over http)")
    if access.scheme == "https" and not access.verify_certificate:
        return failed(name, node.name, "https with verify_certificate: false: the node's "
                      "certificate is not checked",
                      "give the node's CA as winrm.ca_file and remove verify_certificate: false")
    how = "unencrypted" if unencrypted else (
        "TLS" if access.scheme == "https" else "message encryption")
    return passed(name, node.name, f"{access.transport} over {access.scheme} ({how}); "
                  f"Basic {'on' if facts.winrm_basic else 'off'}, AllowUnencrypted "
                  f"{'on' if facts.winrm_allow_unencrypted else 'off'}")


def _hyperv(node: str, facts: WindowsFacts) -> CheckResult:
    if facts.hyperv_feature != "Installed" or not facts.hyperv_module:
        return failed("hyperv-role", node, f"Hyper-V role {facts.hyperv_feature}, module "
                      f"{'present' if facts.hyperv_module else 'absent'}",
                      "Install-WindowsFeature -Name Hyper-V -IncludeManagementTools -Restart")
    return passed("hyperv-role", node, "Hyper-V role Installed")


def _vswitch(node: str, job: DevstackHypervJob, facts: WindowsFacts) -> list[CheckResult]:
    name = job.vswitch_name
    adapter = job.windows.vswitch_adapter
    create = (f"New-VMSwitch -Name '{name}' -NetAdapterName "
              f"'{adapter or '<the data NIC>'}' -AllowManagementOS $true")
    if facts.vswitch is None:
        found = ("bootstrap creates it on " + adapter) if adapter else "none"
        return [failed("vswitch", node, f"no vSwitch {name!r} ({found})", create),
                failed("vswitch-adapter", node, "no vSwitch, so no adapter", create),
                failed("data-network", node, "no vSwitch, so no data network", create)]
    kind = facts.vswitch.get("SwitchType", "")
    results = [passed("vswitch", node, f"vSwitch {name!r} is {kind}") if kind == "External"
               else failed("vswitch", node, f"vSwitch {name!r} is {kind}, not External "
                           "(guests would not reach the controller)",
                           f"Remove-VMSwitch -Name '{name}'; {create}")]
    description = facts.vswitch.get("NetAdapterInterfaceDescription", "")
    nic = next((a for a in facts.adapters if a.get("InterfaceDescription") == description
                and description), None)
    if nic is None:
        results.append(failed("vswitch-adapter", node, f"vSwitch {name!r} is bound to "
                              f"{description or 'no adapter'!r}, which no adapter has",
                              f"Set-VMSwitch -Name '{name}' -NetAdapterName '<the data NIC>'"))
        results.append(failed("data-network", node, "no adapter, so no data network",
                              "connect the vSwitch's NIC to the lab set's data network"))
        return results
    if adapter and nic.get("Name", "").lower() != adapter.lower():
        results.append(failed("vswitch-adapter", node, f"vSwitch {name!r} is on "
                              f"{nic.get('Name')!r}, the job says {adapter!r}",
                              f"Set-VMSwitch -Name '{name}' -NetAdapterName '{adapter}' "
                              "(or fix windows.vswitch_adapter)"))
    else:
        results.append(passed("vswitch-adapter", node, f"on {nic.get('Name')} ({description})"))
    status = nic.get("Status", "")
    if status != "Up":
        results.append(failed("data-network", node, f"adapter {nic.get('Name')} is {status}: "
                              "no link to the data network",
                              "cable / connect the adapter to the data network's switch port "
                              "(trunking the lab set's VLAN range) and enable it"))
    else:
        results.append(passed("data-network", node, f"adapter {nic.get('Name')} is Up"))
    return results


def _msiscsi(node: str, facts: WindowsFacts) -> CheckResult:
    fix = "Set-Service -Name MSiSCSI -StartupType Automatic; Start-Service -Name MSiSCSI"
    if facts.msiscsi is None:
        return failed("msiscsi", node, "no MSiSCSI service", fix)
    status, start = facts.msiscsi.get("Status", ""), facts.msiscsi.get("StartType", "")
    if status != "Running":
        return failed("msiscsi", node, f"MSiSCSI {status}, {start} (volume attach logs in to "
                      "iSCSI targets through it)", fix)
    return passed("msiscsi", node, f"MSiSCSI {status}, {start}")


def _service_account(node: str, job: DevstackHypervJob, facts: WindowsFacts) -> CheckResult:
    account = job.windows.service_account
    if account is None:
        return failed("service-account", node, "no windows.service_account: the services run "
                      "as LocalSystem, and migration and resize between nodes fail",
                      "set jobs.<job>.windows.service_account (a domain account, "
                      "docs/windows-nodes.md)")
    if not facts.account_sid:
        return failed("service-account", node, f"{account.username} does not resolve to a SID "
                      "on the node", "join the node to the account's domain, or fix the name")
    if not facts.logon_right:
        return failed("service-account", node, f"{account.username} ({facts.account_sid}) "
                      "does not hold SeServiceLogonRight",
                      "grant 'Log on as a service' to the account (secpol.msc, or the Group "
                      "Policy that sets the right: it overwrites a local grant)")
    return passed("service-account", node, f"{account.username} ({facts.account_sid}) holds "
                  "SeServiceLogonRight")


def _in_subnets(facts: WindowsFacts, subnets: list[str]) -> list[str]:
    """The configured migration subnets the node has no IPv4 address in."""
    addresses = []
    for entry in facts.ipv4:
        try:
            addresses.append(ipaddress.ip_address(str(entry.get("IPAddress", ""))))
        except ValueError:
            continue
    return [s for s in subnets
            if not any(a in ipaddress.ip_network(s, strict=False) for a in addresses)]


def _migration(node: str, job: DevstackHypervJob, facts: WindowsFacts) -> CheckResult:
    wanted = job.windows.migration_authentication
    fix = ("Enable-VMMigration; Set-VMHost -VirtualMachineMigrationAuthenticationType "
           f"{wanted}")
    host = facts.vmhost
    if host is None:
        return failed("migration", node, "no Hyper-V module: no VM host to ask", fix)
    if not host.get("VirtualMachineMigrationEnabled"):
        return failed("migration", node, "live migration is disabled", fix)
    kind = host.get("VirtualMachineMigrationAuthenticationType", "")
    if kind != wanted:
        return failed("migration", node, f"migration authentication {kind}, the job uses "
                      f"{wanted}", fix)
    missing = _in_subnets(facts, job.windows.migration_networks)
    if missing:
        return failed("migration", node, f"no address in the migration network(s) "
                      f"{', '.join(missing)}", "give the node an address on each of "
                      "windows.migration_networks (or fix that list)")
    return passed("migration", node, f"enabled, {kind}")


def _disk(node: str, job: DevstackHypervJob, facts: WindowsFacts,
          limits: Thresholds) -> CheckResult:
    free = facts.instances_free / GIB
    where = f"{job.windows_root}\\Instances (drive {facts.instances_drive}:)"
    if free < limits.windows_free_gib:
        return failed("instances-disk", node, f"{free:.1f} GiB free on {where}, under "
                      f"{limits.windows_free_gib:.0f} GiB",
                      f"free space on drive {facts.instances_drive}: or move windows_root to "
                      "a larger volume")
    return passed("instances-disk", node, f"{free:.1f} GiB free on {where}")


def _files(node: str, job: DevstackHypervJob, facts: WindowsFacts) -> list[CheckResult]:
    """Python, git and the three tools: on the node already, or configured for bootstrap
    (and, for a URL, reachable from the node)."""
    items = [("python", "python_installer", "Python"), ("git", "git_installer", "git"),
             ("openstack_service", "openstack_service", "OpenStackService.exe"),
             ("qemu_img", "qemu_img", "qemu-img.exe"), ("mkisofs", "mkisofs", "mkisofs.exe")]
    configured = job.windows.artefacts()
    problems: dict[str, list[str]] = {"python": [], "tools": []}
    found: dict[str, list[str]] = {"python": [], "tools": []}
    for present_key, key, label in items:
        check = "python" if key in ("python_installer", "git_installer") else "tools"
        artefact = configured[key]
        if artefact is not None and artefact.url:
            answer = facts.downloads.get(key, "not asked")
            # 405/501: the server is reached but refuses HEAD; bootstrap's GET will do.
            if answer != "200" and "(405)" not in answer and "(501)" not in answer:
                problems[check].append(f"{label}: the node cannot fetch {artefact.url} "
                                       f"({answer})")
                continue
            found[check].append(f"{label} from {artefact.url}")
        elif artefact is not None:
            found[check].append(f"{label} uploaded from the worker")
        elif facts.files.get(present_key):
            found[check].append(f"{label} present")
        else:
            problems[check].append(f"{label}: not on the node and windows.{key} not configured")
    results = []
    for check in ("python", "tools"):
        if problems[check]:
            results.append(failed(check, node, "; ".join(problems[check]),
                                  "configure the file as {url, sha256} (a URL the node "
                                  "reaches) or {path, sha256} (docs/windows-nodes.md)"))
        else:
            results.append(passed(check, node, "; ".join(found[check])))
    return results


def _hostname(node: NodeConfig, facts: WindowsFacts) -> CheckResult:
    short = facts.hostname.split(".")[0]
    if short.lower() != node.name.lower():
        return failed("hostname", node.name, f"the node calls itself {facts.hostname!r}, not "
                      f"{node.name!r} (nova's host name, which live migration targets)",
                      f"Rename-Computer -NewName '{node.name}' -Restart (or rename the node in "
                      "the configuration)")
    if not facts.resolved:
        return failed("hostname", node.name, f"{node.name!r} does not resolve on the node",
                      f"add {node.name} to the lab's DNS (or every node's hosts file)")
    lost = sorted(peer for peer, addresses in facts.peers.items() if not addresses)
    if lost:
        return failed("hostname", node.name, f"the node cannot resolve its migration peer(s) "
                      f"{', '.join(lost)} (live migration targets them by name)",
                      "add every Hyper-V node of the lab set to the lab's DNS")
    peers = f"; peers {', '.join(sorted(facts.peers))} resolve" if facts.peers else ""
    return passed("hostname", node.name, f"{facts.hostname} resolves to "
                  f"{', '.join(facts.resolved)}{peers}")


def windows_verdicts(node: NodeConfig, job: DevstackHypervJob, facts: WindowsFacts,
                     skew: float, limits: Thresholds) -> list[CheckResult]:
    """Every check of a Windows node after a successful probe (in the report's order)."""
    name = node.name
    version = facts.ps_version
    results = [winrm_transport_verdict(node, facts),
               passed("powershell", name, f"Windows PowerShell {version}")
               if _version(version) >= (5, 1) else
               failed("powershell", name, f"PowerShell {version}, the job's scripts need 5.1",
                      "install Windows Management Framework 5.1 (or use Windows Server 2016+)"),
               _hyperv(name, facts)]
    results += _vswitch(name, job, facts)
    results += [_msiscsi(name, facts), _service_account(name, job, facts),
                _migration(name, job, facts), _disk(name, job, facts, limits),
                clock_verdict(name, skew, limits.max_clock_skew)]
    results += _files(name, job, facts)
    results.append(_hostname(node, facts))
    return results
