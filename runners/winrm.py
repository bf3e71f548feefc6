"""The WinRM executor: run PowerShell on a Windows Hyper-V node, copy files both ways.

Built on pywinrm's `Protocol`, not `Session.run_ps`, for three reasons
(docs/winrm.md has the node's side):
- shells are opened with code page 65001 and output is decoded as UTF-8, so
  non-ASCII text (Gerrit names, localized Windows messages) survives
  (decoding, UTF-16 and OEM code pages included: runners/winrm_output.py);
- a script is staged: uploaded in chunks (base64 lines on the command's stdin)
  to a .ps1 file and run with `-File`, because an inlined `-EncodedCommand`
  breaks cmd.exe's 8,191-character line past ~3,000 characters;
- output is streamed to the caller after every Receive, and the whole command
  has a deadline after which it is signalled to terminate; it is signalled the
  same way as soon as the caller's `should_stop` says so (abort, supersede).
"""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import requests
from winrm.exceptions import (
    WinRMError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
)
from winrm.protocol import Protocol

from runners.base import (
    CommandAborted,
    CommandResult,
    CommandTimeout,
    ExecutorError,
    OutputSink,
    StopCheck,
)
from runners.render import make_environment
from runners.winrm_output import Base64Lines, CommandOutput
from runners.winrm_support import (
    encoded_command,
    missing_transport_support,
    quota_hint,
    step_of,
    windows_command_line,
)

if TYPE_CHECKING:
    from ci.config import NodeConfig

logger = logging.getLogger(__name__)

DEFAULT_SCRIPTS_DIR = "C:\\OpenStack\\hyperv-ci\\scripts"
PUT_CHUNK_BYTES = 48 * 1024  # raw bytes per Send: ~64 KiB of base64, well inside MaxEnvelopeSize
TRANSFER_TIMEOUT = 900.0
EXIT_NOT_FOUND = 2  # the get helper's exit code for a missing file
# A shell's Delete keeps the authenticated HTTP connection for the next command
# (pywinrm's close_shell drops it by default: a new NTLM handshake, two more round
# trips, for every script and file). Only this long after the last use: HTTP.sys
# closes idle connections after 120 s, and a sealed NTLM session cannot carry on
# over a new connection, so a longer gap starts a new session first.
SESSION_IDLE = 30.0
# Longest Receive (whole seconds, WinRM's minimum) while a caller's `should_stop`
# is to be honoured: the node holds a quiet Receive up to OperationTimeout (20 s).
STOP_POLL = 1
# Everything pywinrm or the HTTP stack raises when the node or the network misbehaves.
_TRANSPORT_ERRORS = (
    WinRMError,
    WinRMTransportError,
    WinRMOperationTimeoutError,
    requests.RequestException,
    OSError,
    StopIteration,  # pywinrm's reaction to a reply missing a mandatory element
    AssertionError,  # pywinrm's RelatesTo check
    ValueError,  # an unparseable reply
)


def helper_script(name: str, path: str) -> str:
    """The executor's own upload or download script (`winrm-put` / `winrm-get`) for `path`,
    rendered as the job's scripts are; the download reads in the upload's chunk size."""
    return make_environment().get_template(f"{name}.ps1.j2").render(
        path=path, chunk_bytes=PUT_CHUNK_BYTES)


class WinRMExecutor:
    """Runs commands on one Windows node over WinRM (one command at a time)."""

    def __init__(
        self,
        node: NodeConfig,
        *,
        operation_timeout: int | None = None,
        read_timeout: int | None = None,
        scripts_dir: str = DEFAULT_SCRIPTS_DIR,
        backoff: float = 2.0,
    ) -> None:
        if node.winrm is None:
            raise ValueError(f"node {node.name} has no winrm section")
        access = node.winrm
        self.node_name = node.name
        self.scripts_dir = scripts_dir.rstrip("\\")
        self.backoff = backoff
        self._operation_timeout = operation_timeout or access.operation_timeout
        self._oem_codepage = access.oem_codepage
        host = f"[{node.address}]" if ":" in node.address else node.address
        self.endpoint = f"{access.scheme}://{host}:{access.endpoint_port}/{access.path.lstrip('/')}"
        validate = access.verify_certificate
        missing = missing_transport_support(access.transport)
        if missing:
            raise ExecutorError(f"{node.name}: {missing}")
        try:
            self._protocol = Protocol(
                self.endpoint,
                transport=access.transport,
                username=access.username,
                password=access.password.resolve(),
                server_cert_validation="validate" if validate else "ignore",
                # None: the system CA store, never a CA bundle picked from the environment
                # (winrm/transport.py handles None; its annotation leaves it out).
                ca_trust_path=(str(access.ca_file) if (validate and access.ca_file)
                               else None),  # type: ignore[arg-type]
                read_timeout_sec=read_timeout or access.read_timeout,
                operation_timeout_sec=self._operation_timeout,
                proxy=None,
            )
        except (WinRMError, ValueError) as exc:
            raise ExecutorError(f"{node.name}: cannot set up WinRM: {exc}") from None
        self._lock = threading.RLock()
        self._last_used: float | None = None  # monotonic time the session last answered

    # -- the Executor interface --
    def run_powershell(
        self,
        script: str,
        *,
        timeout: float,
        on_output: OutputSink | None = None,
        idempotent: bool = False,
        retries: int = 2,
        should_stop: StopCheck | None = None,
    ) -> CommandResult:
        """Stage `script` as a .ps1 on the node and run it; stream output to `on_output`.

        Raises CommandTimeout past `timeout` seconds (the command is terminated on the node),
        CommandAborted once `should_stop` returns True (asked at least every STOP_POLL
        seconds; the command is terminated the same way) and ExecutorError when the
        transport fails; an `idempotent` script is first retried up to `retries` times
        with exponential backoff.
        """
        attempts = 1 + max(0, retries) if idempotent else 1
        step = step_of(script)
        for attempt in range(1, attempts + 1):
            if should_stop is not None and should_stop():
                # Also between retries: an aborted build must not start the step again.
                raise CommandAborted(f"{self.node_name}: step {step} aborted before it started")
            try:
                return self._run_staged(script, step, timeout, on_output, should_stop)
            except (CommandTimeout, CommandAborted):
                raise
            except ExecutorError as exc:
                if attempt >= attempts:
                    raise
                delay = self.backoff * 2 ** (attempt - 1)
                logger.warning(
                    "%s: step %s failed (%s); retry %d of %d in %.1f s",
                    self.node_name,
                    step,
                    exc,
                    attempt,
                    attempts - 1,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def put(self, data: bytes, remote_path: str) -> None:
        """Write `data` to `remote_path` on the node (binary-safe, chunked, parents created)."""
        self.put_many([(data, remote_path)])

    def put_many(self, files: Sequence[tuple[bytes, str]]) -> None:
        """Write each `(data, remote_path)` as `put` does, all through one shell."""
        deadline = time.monotonic() + TRANSFER_TIMEOUT
        with self._lock, self._shell() as shell_id:
            for data, remote_path in files:
                self._put_in_shell(shell_id, data, remote_path, deadline)

    def get(self, remote_path: str, local_path: Path) -> None:
        """Copy `remote_path` from the node to `local_path` (FileNotFoundError if it is absent)."""
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        partial = local_path.with_name(local_path.name + ".part")
        try:
            with self._lock, self._shell() as shell_id, partial.open("wb") as fh:
                script = helper_script("winrm-get", remote_path)
                command_id = self._call(
                    self._protocol.run_command, shell_id, encoded_command(script)
                )
                lines = Base64Lines(fh)
                result = self._receive(
                    shell_id, command_id, time.monotonic() + TRANSFER_TIMEOUT, None, lines.feed
                )
                lines.close()
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if result.exit_code == EXIT_NOT_FOUND:
            partial.unlink(missing_ok=True)
            raise FileNotFoundError(f"{self.node_name}: {remote_path}")
        if not result.ok:
            partial.unlink(missing_ok=True)
            raise ExecutorError(
                f"{self.node_name}: reading {remote_path} failed "
                f"(exit {result.exit_code}): {result.stderr.strip()}"
            )
        partial.replace(local_path)

    def connect(self) -> None:
        """Authenticate now rather than at the first command (ExecutorError if it cannot):
        with NTLM over http, pywinrm sets up the sealed session with an empty message."""
        with self._lock:
            self._call(self._protocol.transport.build_session)
            self._last_used = time.monotonic()

    def close(self) -> None:
        """Drop the HTTP session (shells are closed after every command)."""
        with self._lock:
            self._protocol.transport.close_session()
            self._last_used = None

    # -- internals --
    def _run_staged(
        self, script: str, step: str, timeout: float, on_output: OutputSink | None,
        should_stop: StopCheck | None = None,
    ) -> CommandResult:
        deadline = time.monotonic() + timeout
        path = f"{self.scripts_dir}\\{uuid.uuid4().hex[:12]}-{step}.ps1"
        command = windows_command_line(
            [
                "powershell",
                "-NoProfile",
                "-NonInteractive",
                "-ExecutionPolicy",
                "Bypass",
                "-File",
                path,
            ]
        )
        with self._lock, self._shell() as shell_id:
            # A BOM, or Windows PowerShell 5.1 reads the file in the ANSI code page.
            self._put_in_shell(shell_id, ("\ufeff" + script).encode("utf-8"), path, deadline)
            logger.info(
                "%s: running step %s (%d characters) from %s",
                self.node_name,
                step,
                len(script),
                path,
            )
            command_id = self._call(self._protocol.run_command, shell_id, command)
            result = self._receive(shell_id, command_id, deadline, on_output,
                                   should_stop=should_stop)
        logger.info("%s: step %s exited %d", self.node_name, step, result.exit_code)
        return result

    def _put_in_shell(self, shell_id: str, data: bytes, remote_path: str, deadline: float) -> None:
        script = helper_script("winrm-put", remote_path)
        command_id = self._call(self._protocol.run_command, shell_id, encoded_command(script))
        chunks = [data[i : i + PUT_CHUNK_BYTES] for i in range(0, len(data), PUT_CHUNK_BYTES)] or [
            b""
        ]
        for index, chunk in enumerate(chunks):
            line = base64.b64encode(chunk) + b"\r\n" if chunk else b""
            self._call(
                self._protocol.send_command_input,
                shell_id,
                command_id,
                line,
                index == len(chunks) - 1,
            )
        result = self._receive(shell_id, command_id, deadline, None)
        if not result.ok:
            raise ExecutorError(
                f"{self.node_name}: writing {remote_path} failed "
                f"(exit {result.exit_code}): {result.stderr.strip()}"
            )

    @contextmanager
    def _shell(self) -> Iterator[str]:
        last = self._last_used
        reused = last is not None and time.monotonic() - last <= SESSION_IDLE
        if last is not None and not reused:
            self._protocol.transport.close_session()  # idle too long: authenticate anew
        try:
            shell_id = self._call(self._protocol.open_shell, codepage=65001, noprofile=True)
        except ExecutorError as exc:
            if not reused:
                raise
            # The kept connection was gone (the node restarted WinRM, a proxy dropped
            # it): `_call` dropped the session, so this Create authenticates anew.
            logger.info("%s: kept WinRM session failed (%s); opening a new one",
                        self.node_name, exc)
            shell_id = self._call(self._protocol.open_shell, codepage=65001, noprofile=True)
        try:
            yield shell_id
        finally:
            self._close_shell(shell_id)

    def _close_shell(self, shell_id: str) -> None:
        """Delete the shell on every path: a node allows a user 30 (MaxShellsPerUser).

        A shell left open counts against that quota until the node's IdleTimeout
        (2 hours by default) deletes it, so a few dozen failed steps would lock the CI
        out of the node. After a transport error the session may be dead or its
        encryption out of step, so a failed Delete is tried once more on a new one.
        """
        for attempt in (1, 2):
            try:
                self._protocol.close_shell(shell_id, close_session=False)
                self._last_used = time.monotonic()
                return
            except _TRANSPORT_ERRORS as exc:
                self._protocol.transport.close_session()
                self._last_used = None
                if attempt == 2:
                    # The node may be gone; its shell dies with it or at its idle timeout.
                    logger.warning("%s: could not close shell %s: %s", self.node_name,
                                   shell_id, exc)

    def _call(self, fn: Callable[..., object], *args: object, **kwargs: object) -> str:
        try:
            return fn(*args, **kwargs)  # type: ignore[return-value]
        except _TRANSPORT_ERRORS as exc:
            # Start the next call on a new session: pywinrm keeps a session whose
            # encryption set-up failed and would then speak to the node unsealed.
            self._protocol.transport.close_session()
            raise ExecutorError(
                f"{self.node_name}: WinRM {fn.__name__} failed: {type(exc).__name__}: {exc}"
                f"{quota_hint(exc)}"
            ) from exc

    def _receive(
        self,
        shell_id: str,
        command_id: str,
        deadline: float,
        on_output: OutputSink | None,
        stdout_bytes: Callable[[bytes], None] | None = None,
        should_stop: StopCheck | None = None,
    ) -> CommandResult:
        output = CommandOutput(on_output, stdout_bytes, self._oem_codepage)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._terminate(shell_id, command_id)
                raise CommandTimeout(f"{self.node_name}: command timed out; it was terminated")
            if should_stop is not None and should_stop():
                self._terminate(shell_id, command_id)
                raise CommandAborted(f"{self.node_name}: command aborted; it was terminated")
            # A Receive is held by the node up to OperationTimeout: keep it inside the
            # deadline, and short enough to ask `should_stop` again soon.
            hold = min(self._operation_timeout, math.ceil(remaining))
            if should_stop is not None:
                hold = min(hold, STOP_POLL)
            self._protocol.operation_timeout_sec = max(1, hold)
            try:
                out, err, code, done = self._protocol.get_command_output_raw(shell_id, command_id)
            except WinRMOperationTimeoutError:
                continue  # no output yet: ask again
            except _TRANSPORT_ERRORS as exc:
                # A reset connection leaves pywinrm's session (and, with NTLM over http,
                # its message encryption) unusable: the shell's Delete needs a new one.
                self._protocol.transport.close_session()
                raise ExecutorError(
                    f"{self.node_name}: WinRM receive failed: {type(exc).__name__}: {exc}"
                ) from exc
            finally:
                self._protocol.operation_timeout_sec = self._operation_timeout
            output.feed(out, err, final=done)
            if done:
                return CommandResult(code, "".join(output.stdout), output.stderr)

    def _terminate(self, shell_id: str, command_id: str) -> None:
        try:
            self._protocol.cleanup_command(shell_id, command_id)  # Signal terminate
        except _TRANSPORT_ERRORS as exc:
            logger.warning("%s: could not signal the command to stop: %s", self.node_name, exc)
