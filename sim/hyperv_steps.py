"""The simulated Hyper-V node's answers to the job's steps (mixed into HyperVHost).

Each handler models what its template (runners/templates/<step>.ps1.j2) does
to a Windows node and prints what that script prints on success: the
literal `Write-Output` lines, filled from the script's own `$Name = '...'`
parameters, and the output of the native tools it runs (`python --version`,
`sc.exe`, `pip freeze`). The rules a real node enforces are modelled where a
real run would fail on them:

- no Hyper-V role, no Hyper-V module: a Hyper-V cmdlet outside a
  `Get-Module -ListAvailable -Name 'Hyper-V'` guard is not recognized
  (sim/hyperv_script.py);
- bootstrap's downloads and uploads are refused unless their SHA-256 matches
  (Get-FileHash), and a node reaches only the lab's loopback server;
- the Hyper-V role needs a restart once installed (Install-WindowsFeature's
  RestartNeeded), which the CI cannot do mid-build.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import zipfile
from abc import ABC, abstractmethod

from sim.faults import FaultyConsole
from sim.hyperv_script import (
    NOT_RECOGNIZED,
    Artefact,
    artefacts,
    fetch,
    list_items,
    unguarded_hyperv_command,
)
from sim.windows_shell import script_parameters

SERVICES = ("nova-compute", "neutron-hyperv-agent")
DEFAULT_ROOT = "C:\\OpenStack"
PYTHON_VERSION = "Python 3.11.9"  # what `python.exe --version` prints
GIT_VERSION = "git version 2.45.1.windows.1"  # what `git.exe --version` prints
SC_DELETED = "[SC] DeleteService SUCCESS"  # what `sc.exe delete NAME` prints
# What a service that will not start prints on stderr when run by hand.
SERVICE_STDERR = (
    "2024-05-01 10:00:00.000 4242 INFO nova.virt.hyperv.driver [-] Hyper-V host ready",
    "2024-05-01 10:00:01.000 4242 INFO nova.compute.manager [-] 计算节点启动 (Zoë)",
)
# collect-logs masks passwords in the configs it publishes (the same two patterns).
_MASKS = (
    (re.compile(r"^(\s*\w*password\w*\s*=).*$", re.MULTILINE), r"\1 ********"),
    (re.compile(r"(://[^:/@\s]+:)[^@\s]+@"), r"\1********@"),
)


class _Paths:
    """The folders `_common.ps1.j2` derives from `$Root`, and the script's parameters."""

    def __init__(self, script: str) -> None:
        self.params = script_parameters(script)
        root = self.params.get("root", DEFAULT_ROOT).rstrip("\\")
        self.node = self.params.get("nodename", "")
        self.staging = f"{root}\\hyperv-ci"
        self.build = f"{root}\\build"
        self.venv = f"{root}\\venv"
        self.etc = f"{root}\\etc"
        self.logs = f"{root}\\logs"
        self.locks = f"{root}\\locks"
        self.instances = f"{root}\\Instances"
        self.bin = f"{root}\\bin"
        self.collected = f"{root}\\collected"
        self.python = f"{root}\\Python\\python.exe"


class HyperVSteps(ABC):
    """Step handlers; HyperVHost provides the state and the file store."""

    node_name: str
    services: dict[str, str]
    vms: dict[str, str]
    planned_vms: set[str]
    features: set[str]
    event_log: list[tuple[str, str, str]]
    _lock: threading.RLock

    # The file store and state publication HyperVHost provides.
    @abstractmethod
    def write_file(self, path: str, data: bytes) -> None: ...

    @abstractmethod
    def read_file(self, path: str) -> bytes | None: ...

    @abstractmethod
    def files_under(self, folder: str) -> list[str]: ...

    @abstractmethod
    def remove_tree(self, folder: str) -> int: ...

    @abstractmethod
    def publish(self) -> None: ...

    def _init_node(self, *, hyperv_role: bool) -> None:
        """A lab node: the role installed (it needs a restart, done before the node joins)."""
        self.hyperv_role = hyperv_role
        self.vswitches: dict[str, str] = {"external": "External"} if hyperv_role else {}
        # name -> (status, start type): a fresh install leaves the initiator stopped, Manual.
        self.system_services: dict[str, tuple[str, str]] = {"MSiSCSI": ("Stopped", "Manual")}
        self.migration: dict[str, object] = {}
        self.service_accounts: dict[str, str] = {}
        self.logon_right: set[str] = set()
        self.administrators: set[str] = set()
        self.event_log.append(("System", "Information", "The Event log service was started."))

    # -- shared pieces --------------------------------------------------------------------
    def _hyperv_module_refusal(self, script: str, out: FaultyConsole) -> bool:
        """True (and PowerShell's error written) if the script needs the absent module."""
        if self.hyperv_role:
            return False
        missing = unguarded_hyperv_command(script)
        if missing is None:
            return False
        out.err(NOT_RECOGNIZED.format(name=missing))
        return True

    def _stop_services(self, script: str, out: FaultyConsole) -> int:
        self._stop_all()
        out.line(f"services stopped on {_Paths(script).node}")
        return 0

    def _stop_all(self) -> None:
        with self._lock:
            for name in self.services:
                self.services[name] = "Stopped"
        self.publish()

    def _machines(self, script: str, out: FaultyConsole) -> bool:
        """`_machines.ps1.j2`: services stopped, VMs and planned VMs removed. False on failure."""
        self._stop_all()
        if self._hyperv_module_refusal(script, out):
            return False
        if not self.hyperv_role:
            out.line("Hyper-V module not installed: no VMs to remove")
            return True
        with self._lock:
            for name in sorted(self.vms):
                out.line(f"removed VM {name}")
            for name in sorted(self.planned_vms):
                out.line(f"removed planned VM {name}")
            self.vms.clear()
            self.planned_vms.clear()
        return True

    # -- the steps ------------------------------------------------------------------------
    def _teardown(self, script: str, out: FaultyConsole) -> int:
        paths = _Paths(script)
        if not self._machines(script, out):
            return 1
        with self._lock:
            for name in list(self.services):
                del self.services[name]
                out.line(SC_DELETED)
        self.publish()
        for folder in (paths.build, paths.venv, paths.etc, paths.logs, paths.locks,
                       paths.instances, paths.collected):
            self.remove_tree(folder)
        self.remove_tree(f"{paths.staging}\\logs.zip")
        with self._lock:
            self.event_log.clear()
        out.line(f"node {paths.node} torn down")
        return 0

    def _bootstrap(self, script: str, out: FaultyConsole) -> int:
        paths = _Paths(script)
        p = paths.params
        out.line(f"change {p.get('change', '')} of {p.get('project', '')} on "
                 f"{p.get('branch', '')}")
        out.line("subject: " + p.get("subject", ""))
        out.line("owner: " + p.get("owner", ""))
        if not self.hyperv_role:
            out.err("installed the Hyper-V role: restart the node before it takes builds")
            return 1
        out.line("Hyper-V role: Installed")
        with self._lock:
            self.system_services["MSiSCSI"] = ("Running", "Automatic")
            self.migration = {"enabled": True,
                              "authentication": p.get("migrationauthentication", ""),
                              "networks": list_items(script, "MigrationNetworks")}
        out.line("MSiSCSI: Running, Automatic")
        out.line(f"VM migration enabled ({p.get('migrationauthentication', '')})")
        if not self._vswitch(p, out):
            return 1
        found = artefacts(p)
        if self.read_file(paths.python) is None:
            if not self._get_artefact(found["python_installer"],
                             f"{paths.staging}\\downloads\\python-installer.exe", out):
                return 1
            self.write_file(paths.python, b"MZ python")  # the installer ran quietly
        out.line(PYTHON_VERSION)
        if "git" not in self.features:
            if not self._get_artefact(found["git_installer"],
                             f"{paths.staging}\\downloads\\git-installer.exe", out):
                return 1
            with self._lock:
                self.features.add("git")
        out.line(GIT_VERSION)
        for key in ("openstack_service", "qemu_img", "mkisofs"):
            tool = found[key]
            path = f"{paths.bin}\\{tool.file_name}"
            present = self.read_file(path)
            if present is not None and (not tool.sha256 or _sha256(present) == tool.sha256):
                out.line(f"{key}: present, {path}")
            elif not self._get_artefact(tool, path, out, keep=True):
                return 1
        out.line(f"node {paths.node} ready for build {p.get('buildid', '')}")
        return 0

    def _vswitch(self, p: dict[str, str], out: FaultyConsole) -> bool:
        name, adapter = p.get("vswitch", "external"), p.get("vswitchadapter", "")
        with self._lock:
            kind = self.vswitches.get(name)
            if kind is None:
                if not adapter:
                    out.err(f"Hyper-V virtual switch not found: {name} "
                            "(set windows.vswitch_adapter to create it)")
                    return False
                self.vswitches[name] = kind = "External"
                out.line(f"created the external vSwitch {name} on {adapter}")
        if kind != "External":
            out.err(f"Hyper-V virtual switch {name} is {kind}, not External")
            return False
        out.line(f"VMSwitch {name} (External) is ready")
        return True

    def _get_artefact(self, artefact: Artefact, destination: str, out: FaultyConsole, *,
             keep: bool = False) -> bool:
        """Get-Artefact: fetched and checked, or its error written. `keep`: write the file."""
        data, error = fetch(artefact, destination, self.read_file)
        if data is None:
            out.err(error)
            return False
        if keep:
            self.write_file(destination, data)
        out.line(f"{artefact.key}: SHA-256 verified, {destination}")
        return True

    def _install(self, script: str, out: FaultyConsole) -> int:
        paths = _Paths(script)
        projects = list_items(script, "Projects")
        # `pip freeze`: the constraints' pins, then the projects installed from source.
        for pin in ("os-win==5.9.0", "oslo.config==9.1.1", "pbr==5.11.1"):
            out.line(pin)
        for project in projects:
            name = project.rsplit("/", 1)[-1]
            out.line(f"{name} @ file:///{paths.build.replace(chr(92), '/')}/{name}")
        self.write_file(f"{paths.build}\\nova\\setup.cfg", b"[metadata]\nname = nova\n")
        out.line(f"installed {len(projects)} projects on {paths.node}")
        return 0

    def _configure_services(self, script: str, out: FaultyConsole) -> int:
        paths = _Paths(script)
        user = paths.params.get("serviceuser", "")
        for name in ("nova.conf", "neutron_hyperv_agent.conf"):
            data = self.read_file(f"{paths.staging}\\{name}")
            if data is not None:
                self.write_file(f"{paths.etc}\\{name}", data)
        if user:
            with self._lock:
                granted, admin = user in self.logon_right, user in self.administrators
                self.logon_right.add(user)
                self.administrators.add(user)
            out.line(f"{user} holds SeServiceLogonRight" if granted
                     else f"granted SeServiceLogonRight to {user}")
            out.line(f"{user} is a local administrator" if admin
                     else f"{user} added to the local Administrators")
        with self._lock:
            for name in SERVICES:
                if name in self.services:
                    out.line(SC_DELETED)
                self.services[name] = "Stopped"
                self.service_accounts[name] = user or "LocalSystem"
                self.event_log.append(("System", "Information",
                                       f"A service was installed in the system: {name}"))
        self.publish()
        for name in SERVICES:
            out.line(f"service {name} created, running as {user or 'LocalSystem'}")
        return 0

    def _start_services(self, script: str, out: FaultyConsole) -> int:
        paths = _Paths(script)
        # A step made to fail (a fault's exit code) models services that died at start.
        failing = bool(out.fault and out.fault.exit_code)
        with self._lock:
            missing = [name for name in SERVICES if name not in self.services]
            for name in SERVICES:
                if name in self.services and not failing:
                    self.services[name] = "Running"
                    self.event_log.append(("System", "Information",
                                           f"The {name} service entered the running state."))
        self.publish()
        if missing:
            out.err(f"Start-Service : Cannot find any service with service name '{missing[0]}'.")
            return 1
        for name in SERVICES:
            self.write_file(f"{paths.logs}\\{name}.log", (
                f"2024-05-01 10:00:00.000 4242 INFO {name} [-] started\r\n"
                "2024-05-01 10:00:02.000 4242 INFO nova.compute.manager [-] 实例 Zoë spawned\r\n"
            ).encode())
        out.line(f"services running on {paths.node}")
        return 0

    def _service_stderr(self, script: str, out: FaultyConsole) -> int:
        with self._lock:
            states = {name: self.services.get(name) for name in SERVICES}
        for name, state in states.items():
            if state == "Running":
                out.line(f"{name} is running")
                continue
            out.line(f"{name} exited with code 1")
            out.line(f"--- {name} stderr ---")
            for line in SERVICE_STDERR:
                out.line(line)
        return 0

    def _collect_logs(self, script: str, out: FaultyConsole) -> int:
        paths = _Paths(script)
        archive = paths.params.get("logarchive", f"{paths.staging}\\logs.zip")
        collected = paths.collected
        self.remove_tree(collected)
        with self._lock:
            events = list(self.event_log)
            services = dict(self.services)
            accounts = dict(self.service_accounts)
            switches = dict(self.vswitches)
        for log in sorted({log for log, _level, _msg in events}):
            base = f"{collected}\\eventlog\\{log.replace('/', '-')}"
            self.write_file(base + ".evtx", b"ElfFile\x00" + bytes(range(256)))
            text = "".join(f"TimeCreated      : 05/01/2024 10:00:00\r\nLevelDisplayName : {level}"
                           f"\r\nMessage          : {msg}\r\n\r\n"
                           for name, level, msg in events if name == log)
            self.write_file(base + ".txt", text.encode("utf-8"))
        for path in self.files_under(paths.logs):
            self.write_file(f"{collected}\\logs\\{path[len(paths.logs) + 1:]}",
                            self.read_file(path) or b"")
        for path in self.files_under(paths.etc):
            text = (self.read_file(path) or b"").decode("utf-8", "replace")
            for pattern, replacement in _MASKS:
                text = pattern.sub(replacement, text)
            self.write_file(f"{collected}\\etc\\{path[len(paths.etc) + 1:]}", text.encode())
        node = {
            "systeminfo.txt": f"Host Name:                 {self.node_name.upper()}\r\n"
                              "OS Name:                   Microsoft Windows Server 2022 "
                              "Datacenter\r\n",
            "hotfixes.txt": "HotFixID  Description     InstalledOn\r\n"
                            "KB5034439 Security Update\r\n",
            "ipconfig.txt": "Windows IP Configuration\r\n\r\n   Host Name . . . . : "
                            f"{self.node_name}\r\n",
            "net-adapters.txt": "Name        : Ethernet1\r\nStatus      : Up\r\n",
            "firewall.txt": "Name    : Domain\r\nEnabled : True\r\n",
            "disks.txt": "Number Friendly Name  OperationalStatus\r\n"
                         "0      Virtual Disk   Online\r\n",
            "services.txt": "".join(
                f"[SC] QueryServiceConfig SUCCESS\r\n\r\nSERVICE_NAME: {name}\r\n"
                f"        SERVICE_START_NAME : {accounts.get(name, 'LocalSystem')}\r\n"
                if name in services else f"{name}: not installed\r\n" for name in SERVICES),
            "pip-freeze.txt": "os-win==5.9.0\r\noslo.config==9.1.1\r\n",
        }
        if self.hyperv_role:
            node["vmswitch.txt"] = "".join(f"Name       : {n}\r\nSwitchType : {k}\r\n"
                                           for n, k in switches.items())
            node["vms.txt"] = "Name State Uptime\r\n"
        for name, text in node.items():
            self.write_file(f"{collected}\\node\\{name}", text.encode("utf-8"))
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive_zip:
            for path in self.files_under(collected):
                archive_zip.writestr(path[len(collected) + 1:].replace("\\", "/"),
                                     self.read_file(path) or b"")
        self.write_file(archive, buffer.getvalue())
        out.line(f"logs of {paths.node} in {archive}")
        return 0

    def _cleanup(self, script: str, out: FaultyConsole) -> int:
        paths = _Paths(script)
        if not self._machines(script, out):
            return 1
        self.remove_tree(paths.instances)
        out.line(f"node {paths.node} cleaned")
        return 0


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
