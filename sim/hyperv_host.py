"""A small model of one Windows Hyper-V host, and of what its steps do to it.

`SimWinRMServer` (sim/winrm.py) hands every command line here. Windows' own
rules (cmd.exe's line limit, powershell.exe's -EncodedCommand and -File, the
syntax check) are played by sim/windows_shell.py; this model records each
script, applies its scripted fault (sim/faults.py), and answers it from the
node's state, dispatching on the script's first comment line
`# hyperv-ci-step: NAME`. It never runs PowerShell: it models what the CI's
steps would change on Windows.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from xml.sax.saxutils import escape

from sim.faults import Faults, FaultyConsole
from sim.windows_shell import (
    Console,
    clixml,
    refusal,
    run_command_line,
    script_parameters,
    step_name,
)

logger = logging.getLogger(__name__)

SERVICES = ("nova-compute", "neutron-hyperv-agent")
DEFAULT_LOG_DIR = "C:\\OpenStack\\logs"
DEFAULT_LOG_ARCHIVE = "C:\\OpenStack\\logs.zip"
CLEARED_FOLDERS = ("C:\\OpenStack\\build", "C:\\OpenStack\\logs", "C:\\OpenStack\\instances")


def _key(path: str) -> str:
    return path.replace("/", "\\").rstrip("\\").casefold()


class HyperVHost:
    """State of one Hyper-V node: services, VMs, files, event log. Thread-safe."""

    def __init__(self, node_name: str, lab_dir: Path, faults: Faults | None = None) -> None:
        self.node_name = node_name
        self.state_file = Path(lab_dir) / "hyperv" / f"{node_name}.json"
        self.faults = faults or Faults()
        self.services: dict[str, str] = {}
        self.vms: dict[str, str] = {}
        self.planned_vms: set[str] = set()
        self.features: set[str] = set()
        self.event_log: list[tuple[str, str, str]] = []  # (log, level, message)
        self.scripts: list[tuple[str, str, str]] = []  # (node, step, text)
        self._files: dict[str, tuple[str, bytes]] = {}
        self._lock = threading.RLock()
        self.alive = True
        self.publish()

    # -- files (case-insensitive Windows paths) --
    def write_file(self, path: str, data: bytes) -> None:
        with self._lock:
            self._files[_key(path)] = (path.replace("/", "\\"), bytes(data))

    def read_file(self, path: str) -> bytes | None:
        with self._lock:
            entry = self._files.get(_key(path))
            return entry[1] if entry else None

    def files_under(self, folder: str) -> list[str]:
        prefix = _key(folder) + "\\"
        with self._lock:
            return sorted(
                shown for key, (shown, _) in self._files.items() if key.startswith(prefix)
            )

    def remove_tree(self, folder: str) -> int:
        prefix = _key(folder) + "\\"
        with self._lock:
            doomed = [key for key in self._files if key.startswith(prefix)]
            for key in doomed:
                del self._files[key]
            return len(doomed)

    # -- state shared with the simulated devstack controller --
    def publish(self) -> None:
        """Write services' state to lab_dir/hyperv/<node>.json (atomically)."""
        with self._lock:
            state = {
                "node": self.node_name,
                "services": dict(self.services),
                "alive": self.alive,
                "updated": time.time(),
            }
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, ensure_ascii=False), encoding="utf-8")
        tmp.replace(self.state_file)

    def set_alive(self, alive: bool) -> None:
        with self._lock:
            self.alive = alive
            if not alive:  # a dead node's services are not running any more
                self.services = {name: "Stopped" for name in self.services}
        self.publish()

    def add_vm(self, name: str, state: str = "Running", *, planned: bool = False) -> None:
        with self._lock:
            if planned:
                self.planned_vms.add(name)
            else:
                self.vms[name] = state

    # -- cmd.exe and powershell.exe --
    def execute(self, command_line: str, console: Console) -> int:
        """Run one WinRM command line; output goes to `console`; returns the exit code."""
        return run_command_line(
            command_line,
            console,
            hostname=self.node_name,
            read_file=self.read_file,
            run_script=self.run_script,
        )

    def run_script(self, script: str, console: Console) -> int:
        """Check, record and answer one PowerShell script.

        A script PowerShell would refuse (it does not parse, names a command or
        parameter that does not exist, or ends in a top-level `throw` or `exit N`)
        gets powershell.exe's error and exit code, and none of its step's effects.
        """
        step = step_name(script)
        console.step = step
        with self._lock:
            self.scripts.append((self.node_name, step, script))
        refused = refusal(script)
        if refused is not None:
            if refused.stderr:
                console.write(refused.stderr, stderr=True)
            return refused.exit_code
        fault = self.faults.take(step)
        out = FaultyConsole(console, fault)
        if fault and fault.drop:
            console.drop_connection()
        handler = self._steps().get(step)
        code = handler(script, out) if handler else 0
        if fault and fault.stdout is not None and fault.stdout_encoding:
            text = fault.stdout.replace("\r\n", "\n").replace("\n", "\r\n") + "\r\n"
            console.write_bytes(text.encode(fault.stdout_encoding))
        elif fault and fault.stdout is not None:
            out.line(fault.stdout)
        if fault and fault.stderr is not None:
            console.write(clixml(fault.stderr), stderr=True)
        if fault and fault.hang and not console.wait(None):
            return 0
        if fault and fault.exit_code is not None:
            return fault.exit_code
        return code

    def _steps(self) -> dict[str, Callable[[str, FaultyConsole], int]]:
        return {
            "teardown": self._teardown,
            "bootstrap": self._bootstrap,
            "install": self._install,
            "configure-services": self._configure_services,
            "start-services": self._start_services,
            "stop-services": self._stop_services,
            "service-stderr": self._service_stderr,
            "collect-logs": self._collect_logs,
            "cleanup": self._cleanup,
            "winrm-put": self._put,
            "winrm-get": self._get,
        }

    # -- the job's steps --
    def _log_event(self, log: str, level: str, message: str) -> None:
        self.event_log.append((log, level, message))

    def _stop_all(self, out: FaultyConsole, *, remove: bool) -> None:
        with self._lock:
            for name in list(self.services):
                out.line(f"Stopping service '{name}' ({self.services[name]})")
                self.services[name] = "Stopped"
                if remove:
                    del self.services[name]
                    out.line(f"Removed service '{name}'")
        self.publish()

    def _remove_vms(self, out: FaultyConsole) -> None:
        with self._lock:
            for name in sorted(self.vms):
                out.line(f"Stop-VM -Name '{name}' -TurnOff; Remove-VM '{name}'")
            for name in sorted(self.planned_vms):
                out.line(f"Destroyed planned VM '{name}' (Msvm_PlannedComputerSystem)")
            self.vms.clear()
            self.planned_vms.clear()

    def _teardown(self, script: str, out: FaultyConsole) -> int:
        self._stop_all(out, remove=True)
        self._remove_vms(out)
        for folder in CLEARED_FOLDERS:
            out.line(f"Cleared {folder} ({self.remove_tree(folder)} files)")
        with self._lock:
            count = len(self.event_log)
            self.event_log.clear()
        out.line(f"Cleared event logs Application, System ({count} entries)")
        return 0

    def _bootstrap(self, script: str, out: FaultyConsole) -> int:
        with self._lock:
            self.features.update(("python", "git", "hyper-v", "vswitch:external"))
        for line in (
            "Python 3.11.9 (C:\\Python311\\python.exe)",
            "git version 2.45.1.windows.1",
            "Hyper-V role: Installed",
            "VMSwitch 'external' (External) is ready",
            "Amorçage terminé — 节点就绪",
        ):
            out.line(line)
        return 0

    def _install(self, script: str, out: FaultyConsole) -> int:
        for line in (
            "Cloning into 'C:\\OpenStack\\build\\nova'...",
            "HEAD is now at the change under test",
            "Processing c:\\openstack\\build\\nova",
            "Processing c:\\openstack\\build\\networking-hyperv",
            "Successfully installed nova compute-hyperv networking-hyperv os-win",
            "Installation réussie : 安装完成",
        ):
            out.line(line)
        self.write_file("C:\\OpenStack\\build\\nova\\setup.cfg", b"[metadata]\nname = nova\n")
        return 0

    def _configure_services(self, script: str, out: FaultyConsole) -> int:
        with self._lock:
            for name in SERVICES:
                self.services[name] = "Stopped"
                self._log_event("System", "Information", f"A service was installed: {name}")
        self.publish()
        for name in SERVICES:
            out.line(f"Created service '{name}' (StartType: Manual, Status: Stopped)")
        return 0

    def _start_services(self, script: str, out: FaultyConsole) -> int:
        with self._lock:
            missing = [name for name in SERVICES if name not in self.services]
            for name in SERVICES:
                if name in self.services:
                    self.services[name] = "Running"
                    self._log_event(
                        "System", "Information", f"The {name} service entered the running state."
                    )
        self.publish()
        for name in SERVICES:
            if name not in missing:
                out.line(f"Service '{name}' is Running")
        if missing:
            out.err(f"Start-Service : Cannot find any service with service name '{missing[0]}'.")
            return 1
        return 0

    def _stop_services(self, script: str, out: FaultyConsole) -> int:
        self._stop_all(out, remove=False)
        return 0

    def _service_stderr(self, script: str, out: FaultyConsole) -> int:
        out.line("2024-05-01 10:00:00.000 4242 INFO nova.virt.hyperv.driver [-] Hyper-V host ready")
        out.line("2024-05-01 10:00:01.000 4242 INFO nova.compute.manager [-] 计算节点启动 (Zoë)")
        return 0

    def _collect_logs(self, script: str, out: FaultyConsole) -> int:
        params = script_parameters(script)
        log_dir = params.get("logdir", DEFAULT_LOG_DIR).rstrip("\\")
        archive = params.get("logarchive", DEFAULT_LOG_ARCHIVE)
        with self._lock:
            events = list(self.event_log)
            services = dict(self.services)
        html = (
            "<html><body><table>"
            + "".join(
                f"<tr><td>{escape(log)}</td><td>{escape(level)}</td><td>{escape(msg)}</td></tr>"
                for log, level, msg in events
            )
            + "</table></body></html>"
        )
        self.write_file(f"{log_dir}\\eventlog\\System.html", html.encode("utf-8"))
        self.write_file(f"{log_dir}\\eventlog\\System.evtx", b"ElfFile\x00" + bytes(range(256)))
        for name in SERVICES:
            text = (
                f"2024-05-01 10:00:00.000 4242 INFO {name} [-] "
                f"state {services.get(name, 'absent')}\r\n"
                "2024-05-01 10:00:02.000 4242 INFO nova.compute.manager [-] 实例 Zoë spawned\r\n"
            )
            self.write_file(f"{log_dir}\\{name}.log", text.encode("utf-8"))
        files = self.files_under(log_dir)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive_zip:
            for path in files:
                archive_zip.writestr(
                    path[len(log_dir) + 1 :].replace("\\", "/"), self.read_file(path) or b""
                )
        self.write_file(archive, buffer.getvalue())
        out.line(f"Exported {len(events)} event log entries")
        for path in files:
            out.line(path)
        out.line(archive)
        return 0

    def _cleanup(self, script: str, out: FaultyConsole) -> int:
        self._stop_all(out, remove=False)
        self._remove_vms(out)
        out.line("Node cleaned")
        return 0

    # -- the WinRM executor's own helpers (runners/winrm.py) --
    def _put(self, script: str, out: FaultyConsole) -> int:
        path = script_parameters(script).get("path", "")
        data = out.console.read_stdin()
        if data is None:
            return 1
        try:
            content = b"".join(
                base64.b64decode(line, validate=True) for line in data.split() if line
            )
        except binascii.Error:
            out.err(
                'Exception calling "FromBase64String": The input is not a valid Base-64 string.'
            )
            return 1
        self.write_file(path, content)
        return 0

    def _get(self, script: str, out: FaultyConsole) -> int:
        path = script_parameters(script).get("path", "")
        data = self.read_file(path)
        if data is None:
            out.console.write(f"No such file: {path}\r\n", stderr=True)
            return 2
        for start in range(0, len(data), 49152):
            out.console.write(
                base64.b64encode(data[start : start + 49152]).decode("ascii") + "\r\n"
            )
        return 0
