"""Scripted misbehaviour of the simulated Hyper-V nodes' steps.

Tests and the demo make a step fail, hang, crawl, lie on stdout/stderr or
drop its WinRM connection (`SimWinRMServer.faults.set(...)`); the host model
takes the fault for each run and writes through `FaultyConsole`. It is
separate from sim/hyperv_host.py because faults are the test rig's knob,
not part of what a Windows node does.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sim.windows_shell import Console, clixml


@dataclass
class Fault:
    """A scripted misbehaviour of one step (see `Faults.set`)."""

    exit_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    hang: bool = False
    slow: float | None = None
    drop: bool = False
    times: int | None = None
    # A native tool's output ignores the shell's code page: stdout in this encoding
    # (e.g. "utf-16" with its BOM, or an OEM code page such as "cp437").
    stdout_encoding: str | None = None


class Faults:
    """Faults per step name, settable from tests and the demo. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str, Fault] = {}

    def set(
        self,
        step: str,
        *,
        exit_code: int | None = None,
        stdout: str | None = None,
        stderr: str | None = None,
        hang: bool = False,
        slow: float | None = None,
        drop: bool = False,
        times: int | None = None,
        stdout_encoding: str | None = None,
    ) -> None:
        """Make `step` misbehave: a replacement exit code / stdout / stderr, `hang` until
        signalled, `slow` (seconds between output lines), `drop` the TCP connection mid-command;
        `times` limits how many runs the fault applies to (None: every run); `stdout_encoding`
        writes stdout in that encoding instead of the shell's code page."""
        fault = Fault(exit_code, stdout, stderr, hang, slow, drop, times, stdout_encoding)
        with self._lock:
            self._faults[step] = fault

    def clear(self, step: str | None = None) -> None:
        """Remove one step's fault, or all of them."""
        with self._lock:
            if step is None:
                self._faults.clear()
            else:
                self._faults.pop(step, None)

    def take(self, step: str) -> Fault | None:
        """The fault for this run of `step`, counting it down."""
        with self._lock:
            fault = self._faults.get(step)
            if fault is None:
                return None
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self._faults[step]
            return fault


class FaultyConsole:
    """Line output for steps, slowed down when the step's fault says so."""

    def __init__(self, console: Console, fault: Fault | None) -> None:
        self.console = console
        self.fault = fault  # handlers model a step made to fail (e.g. services that die)
        self.delay = fault.slow if fault else None

    def line(self, text: str) -> None:
        """Write `text` line by line (CRLF), pausing `delay` seconds before each if slowed."""
        for part in text.splitlines() or [""]:
            if self.delay and self.console.wait(self.delay):
                return
            self.console.write(part + "\r\n")

    def err(self, text: str) -> None:
        """Write `text` to stderr as PowerShell's CLIXML error stream."""
        self.console.write(clixml(text), stderr=True)
