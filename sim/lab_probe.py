"""The simulated lab's answers to `hyperv-ci lab check` (runners/lab_check.py).

Windows nodes and parent hosts answer the probes `lab-probe` and
`lab-parent-probe` (runners/templates/lab-*.ps1.j2) from their model: the
HyperVHost state the job's steps change (role, vSwitches, MSiSCSI, migration,
the logon right, files) plus a `WindowsLabState` for what no step touches
(PowerShell's version, adapters, free space, the clock, name resolution).
Every field is a fault a test can inject. The JSON carries the property
names and value spellings of the cmdlets the probe reads, from Microsoft's
reference pages (MicrosoftDocs/windows-powershell-docs, docset/winserver2022-ps):
- hyperv/Get-VMSwitch.md (SwitchType External/Internal/Private,
  NetAdapterInterfaceDescription), hyperv/Get-VMHost.md
  (VirtualMachineMigrationEnabled, VirtualMachineMigrationAuthenticationType
  CredSSP/Kerberos), hyperv/Get-VM.md (State Off/Running/...),
  hyperv/Get-VMSnapshot.md (Name), hyperv/Get-VMProcessor.md and
  hyperv/Set-VMProcessor.md (ExposeVirtualizationExtensions),
  hyperv/Get-VMNetworkAdapter.md and Set-VMNetworkAdapter.md (MacAddressSpoofing On/Off);
- servermanager/Get-WindowsFeature.md (InstallState Installed/Available);
- netadapter/Get-NetAdapter.md (Name, InterfaceDescription, Status Up/Disconnected);
- nettcpip/Get-NetIPAddress.md (IPAddress, PrefixLength, InterfaceAlias);
- PowerShell-Docs 5.1 Get-Service.md (Status Running/Stopped, StartType
  Automatic/Manual/Disabled), Get-PSDrive.md (Free, in bytes), and
  about_WSMan_Provider (Service\\Auth\\Basic and Service\\AllowUnencrypted are
  the strings "true"/"false"; a listener's Keys read "Transport=HTTP Address=*").

The controller's probe is a POSIX sh script that runs for real on the
simulated controller (a sandbox on this machine); only the account it runs
as is modelled: `install_controller_tools` puts an `id` and a `sudo` that
answer from the node's account/ first on the sessions' PATH, so the
sandbox is a devstack host whose CI account is the unprivileged `stack` with
passwordless sudo whoever runs the tests.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sim.faults import FaultyConsole
from sim.hyperv_script import list_items
from sim.windows_shell import script_parameters

if TYPE_CHECKING:
    from sim.hyperv_host import HyperVHost
    from sim.wsman_config import WinRMConfig

FACTS_TAG = "hyperv-ci-lab-facts: "  # runners/lab_facts.py FACTS_TAG
GIB = 1024 ** 3
DOMAIN_SID = "S-1-5-21-1004336348-1177238915-682003330"


@dataclass
class WindowsLabState:
    """What a lab node shows the probe beyond what the job's steps change."""

    ps_version: str = "5.1.20348.2849"  # Windows Server 2022's Windows PowerShell
    clock_offset: float = 0.0  # seconds the node's clock is ahead of this machine's
    hostname: str | None = None  # None: the node's name
    resolves: bool = True  # the node's name resolves in the lab's DNS
    unresolvable: set[str] = field(default_factory=set)  # other names the node cannot resolve
    instances_free: int = 180 * GIB
    nic: str = "Ethernet 2"
    nic_description: str = "Intel(R) Ethernet Controller X710 for 10GbE SFP+"
    nic_status: str = "Up"
    ipv4: list[dict[str, Any]] = field(default_factory=lambda: [
        {"IPAddress": "127.0.0.1", "PrefixLength": 8,
         "InterfaceAlias": "Loopback Pseudo-Interface 1"}])
    # Domain accounts that exist (name -> SID): what NTAccount.Translate finds.
    accounts: dict[str, str] = field(default_factory=dict)
    # Parent hosts, per VM (lower-cased name; absent: as docs/lab.md sets it up):
    # ExposeVirtualizationExtensions, and MacAddressSpoofing of its one adapter.
    nested: dict[str, bool] = field(default_factory=dict)
    mac_spoofing: dict[str, str] = field(default_factory=dict)
    # The node's WinRM service settings, set from its SimWinRMServer.
    allow_basic: bool = False
    allow_unencrypted: bool = False
    listener: str = "HTTP"


def lab_state(host: HyperVHost) -> WindowsLabState:
    """The host's lab state (created on first use; a checkpoint captures it with the rest)."""
    state = getattr(host, "lab_state", None)
    if state is None:
        state = WindowsLabState()
        host.lab_state = state  # type: ignore[attr-defined]
    return state


def sid_of(account: str) -> str:
    digest = int(hashlib.sha256(account.casefold().encode("utf-8")).hexdigest()[:6], 16)
    return f"{DOMAIN_SID}-{1000 + digest % 90000}"


def set_wsman(host: HyperVHost, config: WinRMConfig, tls: bool) -> None:
    """Mirror the server's WinRM settings into what the node's WSMan: drive shows."""
    state = lab_state(host)
    state.allow_basic, state.allow_unencrypted = config.allow_basic, config.allow_unencrypted
    state.listener = "HTTPS" if tls else "HTTP"


def prepare_node(host: HyperVHost, service_account: str) -> None:
    """What docs/lab.md has an operator do to a node before it joins: the account exists
    and holds the logon right, the initiator runs, live migration is on."""
    state = lab_state(host)
    with host._lock:
        state.accounts[service_account] = sid_of(service_account)
        host.logon_right.add(service_account)
        host.system_services["MSiSCSI"] = ("Running", "Automatic")
        host.migration = {"enabled": True, "authentication": "Kerberos", "networks": []}


def _head(url: str) -> str:
    """Invoke-WebRequest -Method Head as the probe records it: the status, or the error."""
    if urllib.parse.urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        return "Unable to connect to the remote server"  # the simulated node reaches loopback
    try:
        request = urllib.request.Request(url, method="HEAD")  # noqa: S310 - http(s) only
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return str(response.status)
    except urllib.error.HTTPError as exc:
        return f"The remote server returned an error: ({exc.code}) {exc.reason}."
    except (urllib.error.URLError, OSError):
        return "Unable to connect to the remote server"


def answer_lab_probe(host: HyperVHost, script: str, out: FaultyConsole) -> int:
    params = script_parameters(script)
    state = lab_state(host)
    root = params.get("root", "C:\\OpenStack").rstrip("\\")
    user = params.get("serviceuser", "")
    with host._lock:
        switch_name = params.get("vswitch", "external")
        kind = next((k for name, k in host.vswitches.items()
                     if name.casefold() == switch_name.casefold()), None)
        initiator = host.system_services.get("MSiSCSI")
        migration = dict(host.migration)
        sid = state.accounts.get(user, "") if user else ""
        holds = bool(user) and user in host.logon_right
        git = "git" in host.features
    urls = dict(zip(list_items(script, "DownloadKeys"), list_items(script, "DownloadUrls"),
                    strict=False))
    facts: dict[str, Any] = {
        "unix_ms": int((time.time() + state.clock_offset) * 1000),
        "ps_version": state.ps_version,
        "hostname": state.hostname or host.node_name,
        "resolved": ["127.0.0.1"] if state.resolves else [],
        # The simulated lab's DNS: every node's name is 127.0.0.1.
        "peers": {peer: [] if peer.casefold() in state.unresolvable else ["127.0.0.1"]
                  for peer in list_items(script, "PeerNames")},
        "winrm_basic": "true" if state.allow_basic else "false",
        "winrm_allow_unencrypted": "true" if state.allow_unencrypted else "false",
        "winrm_listeners": [f"Transport={state.listener} Address=*"],
        "hyperv_feature": "Installed" if host.hyperv_role else "Available",
        "hyperv_module": host.hyperv_role,
        "adapters": [{"Name": state.nic, "InterfaceDescription": state.nic_description,
                      "Status": state.nic_status}],
        "ipv4": state.ipv4,
        "vswitch": None if kind is None or not host.hyperv_role else {
            "Name": switch_name, "SwitchType": kind,
            # Only an External switch is bound to a physical adapter.
            "NetAdapterInterfaceDescription": state.nic_description if kind == "External" else ""},
        "vmhost": None if not host.hyperv_role else {
            "VirtualMachineMigrationEnabled": bool(migration.get("enabled")),
            "VirtualMachineMigrationAuthenticationType":
                migration.get("authentication") or "CredSSP",  # Hyper-V's default
            "UseAnyNetworkForMigration": not migration.get("networks")},
        "msiscsi": None if initiator is None else {"Status": initiator[0],
                                                   "StartType": initiator[1]},
        "account_sid": sid,
        "logon_right": holds and bool(sid),
        "instances_drive": root[0].upper() if root else "C",
        "instances_free": state.instances_free,
        "files": {
            "python": host.read_file(f"{root}\\Python\\python.exe") is not None,
            "git": git,
            "openstack_service": host.read_file(f"{root}\\bin\\OpenStackService.exe") is not None,
            "qemu_img": host.read_file(f"{root}\\bin\\qemu-img.exe") is not None,
            "mkisofs": host.read_file(f"{root}\\bin\\mkisofs.exe") is not None,
        },
        "downloads": {key: _head(url) for key, url in urls.items()},
    }
    out.line(FACTS_TAG + json.dumps(facts, ensure_ascii=False))
    return 0


def answer_parent_probe(host: HyperVHost, script: str, out: FaultyConsole) -> int:
    state = lab_state(host)
    vms: dict[str, Any] = getattr(host, "parent_vms", {})
    answers = []
    for name in list_items(script, "VMNames"):
        vm = next((v for key, v in vms.items() if key.casefold() == name.casefold()), None)
        if vm is None:
            answers.append({"Name": name, "Exists": False, "State": "", "Checkpoints": [],
                            "ExposeVirtualizationExtensions": False, "MacAddressSpoofing": []})
            continue
        answers.append({"Name": name, "Exists": True, "State": vm.state,
                        "Checkpoints": sorted(vm.checkpoints),
                        "ExposeVirtualizationExtensions": state.nested.get(name.casefold(),
                                                                           True),
                        "MacAddressSpoofing": [state.mac_spoofing.get(name.casefold(), "On")]})
    facts = {"unix_ms": int((time.time() + state.clock_offset) * 1000),
             "hyperv_module": host.hyperv_role, "vms": answers if host.hyperv_role else []}
    out.line(FACTS_TAG + json.dumps(facts, ensure_ascii=False))
    return 0


# -- the controller's account ---------------------------------------------------------------

ID_STANDIN = """#!/bin/sh
# id stand-in (simulated controller, sim/lab_probe.py): the modelled CI account.
account={account}
case "$*" in
    -u) exec cat -- "$account/uid" ;;
    -un|"-n -u"|"-u -n") exec cat -- "$account/user" ;;
esac
exec {real_id} "$@"
"""

SUDO_STANDIN = """#!/bin/sh
# sudo stand-in (simulated controller, sim/lab_probe.py): passwordless unless the
# account says otherwise; then it answers as `sudo -n` does.
if [ "$(cat -- {account}/sudo)" != yes ]; then
    echo "sudo: a password is required" >&2
    exit 1
fi
[ "$1" = "-n" ] && shift
exec "$@"
"""


def install_controller_tools(devstack_root: Path) -> Path:
    """Write the account and the `id`/`sudo` stand-ins; returns their directory
    (for the SSH server's PATH)."""
    root = Path(devstack_root)
    tools = root / "system-bin"
    tools.mkdir(parents=True, exist_ok=True)
    account = root / "account"
    if not account.exists():
        set_controller_account(root)
    real_id = shutil.which("id") or "/usr/bin/id"
    values = {"account": shlex.quote(str(account)), "real_id": shlex.quote(real_id)}
    for name, text in (("id", ID_STANDIN), ("sudo", SUDO_STANDIN)):
        path = tools / name
        path.write_text(text.format(**values), encoding="utf-8")
        path.chmod(0o755)
    return tools


def set_controller_account(devstack_root: Path, *, user: str = "stack", uid: int = 1000,
                           sudo: bool = True) -> None:
    """The simulated controller's CI account (a test's fault: uid 0, or no sudo)."""
    account = Path(devstack_root) / "account"
    account.mkdir(parents=True, exist_ok=True)
    for name, value in (("user", user), ("uid", str(uid)), ("sudo", "yes" if sudo else "no")):
        (account / name).write_text(value + "\n", encoding="utf-8")
