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
import json
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from sim.faults import Faults, FaultyConsole
from sim.hyperv_steps import HyperVSteps
from sim.lab_probe import answer_lab_probe, answer_parent_probe
from sim.windows_shell import (
    Console,
    clixml,
    refusal,
    run_command_line,
    script_parameters,
    step_name,
)

logger = logging.getLogger(__name__)



def _key(path: str) -> str:
    return path.replace("/", "\\").rstrip("\\").casefold()


class HyperVHost(HyperVSteps):
    """State of one Hyper-V node: services, VMs, files, event log. Thread-safe.

    The job's step handlers are in sim/hyperv_steps.py; `hyperv_role=False`
    models a fresh node, before the Hyper-V role is installed.
    """

    def __init__(self, node_name: str, lab_dir: Path, faults: Faults | None = None, *,
                 hyperv_role: bool = True) -> None:
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
        self._init_node(hyperv_role=hyperv_role)
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
            "provision-identity": self._identity,
            # `hyperv-ci lab check`'s probes (sim/lab_probe.py).
            "lab-probe": partial(answer_lab_probe, self),
            "lab-parent-probe": partial(answer_parent_probe, self),
        }

    def _identity(self, script: str, out: FaultyConsole) -> int:
        """runners/templates/provision-identity.ps1.j2: `$env:COMPUTERNAME` is the
        NetBIOS name, which Windows keeps in capitals; then the checkpoint's marker."""
        out.line(f"host={self.node_name.upper()}")
        marker = self.read_file(script_parameters(script).get("markerpath", ""))
        if marker is not None:
            out.line("marker=" + marker.decode("utf-8-sig").strip())
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
