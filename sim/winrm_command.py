"""One command running in a simulated WinRM shell: its output buffers, stdin and exit code.

sim/winrm.py's Receive, Send and Signal handlers and the Hyper-V host model
(which writes to it through the Console protocol of sim/hyperv_host.py) share
it; it lives apart so the server module reads as the WS-Management state
machine.
"""

from __future__ import annotations

import codecs
import threading
from dataclasses import dataclass, field

EXIT_TERMINATED = -1073741510  # STATUS_CONTROL_C_EXIT


@dataclass
class SimCommand:
    """One running command: its output buffers, stdin and exit code."""

    command_id: str
    encoder: codecs.IncrementalEncoder
    step: str = ""
    cond: threading.Condition = field(default_factory=threading.Condition)
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    stdin: bytearray = field(default_factory=bytearray)
    stdin_closed: bool = False
    exit_code: int | None = None
    terminated: bool = False
    drop_pending: bool = False
    thread: threading.Thread | None = None

    # -- the Console protocol of sim.hyperv_host --
    def write(self, text: str, *, stderr: bool = False) -> None:
        self._append(self.encoder.encode(text), stderr)

    def write_bytes(self, data: bytes) -> None:
        self._append(data, False)

    def _append(self, data: bytes, stderr: bool) -> None:
        with self.cond:
            if not self.terminated:
                (self.stderr if stderr else self.stdout).extend(data)
                self.cond.notify_all()

    def wait(self, seconds: float | None) -> bool:
        with self.cond:
            self.cond.wait_for(lambda: self.terminated, timeout=seconds)
            return self.terminated

    def read_stdin(self) -> bytes | None:
        with self.cond:
            self.cond.wait_for(lambda: self.stdin_closed or self.terminated)
            return None if self.terminated else bytes(self.stdin)

    def drop_connection(self) -> None:
        with self.cond:
            self.drop_pending = True

    def terminate(self) -> bool:
        """Stop the command; True if it was still running."""
        with self.cond:
            running = self.exit_code is None
            self.terminated = True
            if running:
                self.exit_code = EXIT_TERMINATED
            self.cond.notify_all()
            return running
