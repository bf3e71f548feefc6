"""A simulated parent Hyper-V host: VMs with checkpoints and power states, each VM
a simulated node of the lab, reached over the same WS-Management stack.

The CI's provisioning scripts (runners/templates/provision-*.ps1.j2) arrive at
a `SimWinRMServer` like any node's and go through the same checks (syntax,
cmdlets and parameters against Microsoft's catalog: sim/windows_shell.py);
this model answers them from its VMs, dispatching on the script's step name
and its `$VMName` / `$Checkpoint` assignments, as sim/hyperv_host.py does.

A VM's guest is a simulated Windows node (its `SimWinRMServer` and
`HyperVHost` state) or a simulated controller (its sshd, run as a machine of
its own by sim/sshd.py, and its tree). A checkpoint captures the guest's
state (a Windows node's files, services, VMs, event log, settings; a
controller's whole tree); applying it puts that state back, so whatever a
build left on the node is gone. A VM that is off does not answer (its WinRM
or SSH port refuses connections) until it is started, and turning a
controller off kills every process it runs, as pulling a VM's power does.
"""

from __future__ import annotations

import copy
import logging
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sim.faults import Faults, FaultyConsole
from sim.hyperv_host import HyperVHost
from sim.sshd import OpenSSHServer
from sim.windows_shell import script_parameters
from sim.winrm import SimWinRMServer

logger = logging.getLogger(__name__)

# What a checkpoint does not capture: the model's identity, its test hooks and
# its transcript (what the tests read), and its power (the VM's state says it).
_NOT_CAPTURED = frozenset({"node_name", "state_file", "faults", "scripts", "_lock", "alive"})


def capture(host: HyperVHost) -> dict[str, Any]:
    """The guest's state as a checkpoint holds it (a deep copy)."""
    with host._lock:
        return {key: copy.deepcopy(value) for key, value in vars(host).items()
                if key not in _NOT_CAPTURED}


def restore(host: HyperVHost, state: dict[str, Any]) -> None:
    """Put a captured state back (a deep copy: the checkpoint stays as it was)."""
    with host._lock:
        for key, value in state.items():
            setattr(host, key, copy.deepcopy(value))
    host.publish()


class Guest(Protocol):
    """What runs inside a VM."""

    @property
    def name(self) -> str: ...

    def power_off(self) -> None: ...
    def power_on(self) -> None: ...
    def capture(self) -> Any: ...
    def restore(self, state: Any) -> None: ...


@dataclass
class WindowsGuest:
    """A simulated Windows node as a VM."""

    server: SimWinRMServer

    @property
    def name(self) -> str:
        return self.server.node_name

    def power_off(self) -> None:
        self.server.kill()  # power pulled: connections reset, the port refuses

    def power_on(self) -> None:
        self.server.revive()

    def capture(self) -> dict[str, Any]:
        return capture(self.server.model)

    def restore(self, state: dict[str, Any]) -> None:
        restore(self.server.model, state)


@dataclass
class ControllerGuest:
    """A simulated controller as a VM: its sshd (a machine of its own, sim/sshd.py
    `hostname`: every process of its sessions dies with it) and its tree."""

    name: str
    server: OpenSSHServer
    tree: Path
    checkpoints_dir: Path

    def power_off(self) -> None:
        self.server.kill()

    def power_on(self) -> None:
        self.server.relaunch()

    def capture(self) -> Path:
        saved = self.checkpoints_dir / uuid.uuid4().hex
        shutil.copytree(self.tree, saved, symlinks=True)
        return saved

    def restore(self, state: Path) -> None:
        # The tree's own directory stays: another controller's sshd may have a
        # bind mount on it (sim/lab_sets.py), which removing it would detach.
        for child in self.tree.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        shutil.copytree(state, self.tree, symlinks=True, dirs_exist_ok=True)


@dataclass
class SimVM:
    """One VM on the parent: its power state, checkpoints, and the guest node."""

    name: str
    guest: Guest
    state: str = "Running"  # Hyper-V's VMState: Off, Running, Saved, ...
    checkpoints: dict[str, Any] = field(default_factory=dict)
    # One operation at a time on this VM; other VMs' run alongside, as on Hyper-V
    # (the parent reverts a build's nodes at once).
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def turn_off(self) -> None:
        if self.state != "Off":
            self.guest.power_off()
            self.state = "Off"

    def start(self) -> None:
        if self.state != "Running":
            self.guest.power_on()
            self.state = "Running"


class ParentHostModel(HyperVHost):
    """The parent's answers to the provisioning scripts (and every other shared step)."""

    def __init__(self, node_name: str, lab_dir: Path) -> None:
        self.parent_vms: dict[str, SimVM] = {}
        # Each revert and power-off, in order: (step, VM name), for the tests.
        self.operations: list[tuple[str, str]] = []
        self._vm_lock = threading.RLock()
        super().__init__(node_name, lab_dir, Faults())

    def publish(self) -> None:
        """A parent host is no compute node of any controller: nothing to publish."""

    def _steps(self) -> dict[str, Callable[[str, FaultyConsole], int]]:
        return {**super()._steps(), "provision-revert": self._revert,
                "provision-power-off": self._power_off, "provision-status": self._status}

    def _vm(self, script: str, out: FaultyConsole) -> SimVM | None:
        """Get-VM -Name: Hyper-V refuses a name no VM has (Get-VM.md, "-Name":
        the cmdlet gets the virtual machines with that name; none is an error)."""
        name = script_parameters(script).get("vmname", "")
        # VM names match case-insensitively (Get-VM -Name does so).
        vm = next((v for key, v in self.parent_vms.items() if key.casefold() == name.casefold()),
                  None)
        if vm is None:
            out.err(f'Get-VM : Hyper-V was unable to find a virtual machine with name "{name}".')
        return vm

    def _find_vm(self, script: str, out: FaultyConsole) -> SimVM | None:
        with self._vm_lock:  # the VM table; each VM's own lock covers what is done to it
            return self._vm(script, out)

    def _checkpoint(self, vm: SimVM, script: str, out: FaultyConsole) -> Any:
        """Get-VMSnapshot -VMName -Name: an unknown checkpoint is an error, before
        Restore-VMSnapshot changes anything (Get-VMSnapshot.md, Restore-VMSnapshot.md
        in MicrosoftDocs/windows-powershell-docs, docset/winserver2022-ps/hyper-v)."""
        name = script_parameters(script).get("checkpoint", "")
        state = vm.checkpoints.get(name)
        if state is None:
            out.err("Get-VMSnapshot : Unable to find a snapshot matching the given criteria.")
        return state

    def _revert(self, script: str, out: FaultyConsole) -> int:
        vm = self._find_vm(script, out)
        if vm is None:
            return 1
        with vm.lock:
            state = self._checkpoint(vm, script, out)
            if state is None:
                return 1
            # Stop-VM -TurnOff, Restore-VMSnapshot, Start-VM (provision-revert.ps1.j2).
            vm.turn_off()
            vm.guest.restore(state)
            vm.start()
            self.operations.append(("revert", vm.name))
        out.line(f"VM {vm.name} reverted to checkpoint "
                 f"{script_parameters(script).get('checkpoint', '')} and started")
        return 0

    def _power_off(self, script: str, out: FaultyConsole) -> int:
        vm = self._find_vm(script, out)
        if vm is None:
            return 1
        with vm.lock:
            vm.turn_off()
            self.operations.append(("power-off", vm.name))
        out.line(f"VM {vm.name} is off")
        return 0

    def _status(self, script: str, out: FaultyConsole) -> int:
        vm = self._find_vm(script, out)
        if vm is None:
            return 1
        with vm.lock:
            if self._checkpoint(vm, script, out) is None:
                return 1
        out.line(f"VM {vm.name} is {vm.state}; checkpoint "
                 f"{script_parameters(script).get('checkpoint', '')} present")
        return 0


class SimParentHost:
    """A parent Hyper-V host over WinRM on 127.0.0.1 (start/stop like a node's server)."""

    def __init__(self, name: str, lab_dir: Path, username: str, password: str) -> None:
        self.model = ParentHostModel(name, Path(lab_dir))
        self.server = SimWinRMServer(name, lab_dir, username, password, model=self.model)

    def start(self) -> SimParentHost:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def add_vm(self, guest: SimWinRMServer, checkpoint: str = "clean",
               marker: tuple[str, str] | None = None) -> SimVM:
        """Carry Windows node `guest` as a running VM of the same name, with a clean
        checkpoint taken now; `marker` (path, text) is written into the guest
        first, as an operator does before taking the checkpoint."""
        if marker is not None:
            path, text = marker
            guest.model.write_file(path, text.encode("utf-8"))
        return self._carry(WindowsGuest(guest), checkpoint)

    def add_controller_vm(self, guest: ControllerGuest, checkpoint: str = "clean",
                          marker: tuple[Path, str] | None = None) -> SimVM:
        """Carry a controller as a running VM, its checkpoint taken now; `marker`
        (file, text) is written first."""
        if marker is not None:
            path, text = marker
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + "\n", encoding="utf-8")
        return self._carry(guest, checkpoint)

    def _carry(self, guest: Guest, checkpoint: str) -> SimVM:
        vm = SimVM(guest.name, guest)
        vm.checkpoints[checkpoint] = guest.capture()
        with self.model._vm_lock:
            self.model.parent_vms[vm.name] = vm
        return vm

    def vm(self, name: str) -> SimVM:
        return self.model.parent_vms[name]
