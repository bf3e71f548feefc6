"""A WS-Management (WinRM) server on loopback that real pywinrm talks to unchanged.

It speaks WS-Management's shell protocol: shells (Create with
WINRS_CODEPAGE), Command, Send, Receive long-polled up to the client's
OperationTimeout (then fault 2150858793), Signal, Delete; Negotiate/NTLM,
and Basic where the node allows it; optional TLS (certificates from
sim/tls.py). It enforces a default Windows Server 2022 node's quotas
(sim/wsman_config.py): MaxShellsPerUser, MaxEnvelopeSizekb, the shell
IdleTimeout, MaxTimeoutms, Basic and AllowUnencrypted off. This module is
the node and its shell/command state machine; the HTTP(S) transport is
sim/wsman_http.py, the SOAP envelopes are built and parsed in
sim/wsman_xml.py, and what the commands do is answered by the Hyper-V host
model (sim/hyperv_host.py).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hmac
import logging
import ssl
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sim import wsman_xml
from sim.faults import Faults
from sim.hyperv_host import HyperVHost
from sim.lab_probe import set_wsman
from sim.winrm_command import SimCommand
from sim.wsman_config import WinRMConfig
from sim.wsman_http import DropConnection, WSManHTTPServer
from sim.wsman_ntlm import CREDENTIALS
from sim.wsman_xml import (
    FAULT_ACTION,
    FAULT_INVALID_CODEPAGE,
    FAULT_INVALID_PARAMETER,
    FAULT_QUOTA_MAX_SHELLS,
    FAULT_SHELL_NOT_FOUND,
    FAULT_TIMEOUT,
    WSManFault,
    q,
)

logger = logging.getLogger(__name__)

MAX_RECEIVE_BYTES = 100 * 1024  # raw output per Receive: stays under MaxEnvelopeSize once base64'd
@dataclass
class SimShell:
    """One remote shell: its code page, its commands by id, when a request last named it."""

    shell_id: str
    codepage: int
    last_used: float
    commands: dict[str, SimCommand] = field(default_factory=dict)


class SimWinRMServer:
    """One simulated Windows Hyper-V node reachable over WinRM on 127.0.0.1."""

    def __init__(
        self,
        node_name: str,
        lab_dir: Path,
        username: str,
        password: str,
        port: int = 0,
        tls: tuple[Path, Path] | None = None,
        *,
        config: WinRMConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        model: HyperVHost | None = None,
    ) -> None:
        self.node_name = node_name
        self.host = "127.0.0.1"
        self.port = port
        # `model`: what answers the commands (default: a Hyper-V node of the lab;
        # sim/hyperv_parent.py passes a parent host).
        self.model = model or HyperVHost(node_name, Path(lab_dir), Faults())
        self.faults = self.model.faults
        self.stats: Counter[str] = Counter()
        self.signals: list[
            tuple[str, str]
        ] = []  # (step, signal code) that stopped a running command
        self.holds: list[float] = []  # how long each Receive was to be held, in seconds
        self.config = config or WinRMConfig()
        self._clock = clock  # what the idle timeout is measured with (tests pass a fake one)
        self.username, self._password = username, password
        # requests encodes Basic credentials in Latin-1 when it can, other clients in UTF-8.
        pair = f"{username}:{password}"
        self._auth = {
            "Basic " + base64.b64encode(pair.encode(codec)).decode("ascii")
            for codec in ("utf-8", "latin-1")
            if pair.encode(codec, "ignore").decode(codec) == pair
        }
        self.ssl_context: ssl.SSLContext | None = None
        if tls is not None:
            self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ssl_context.load_cert_chain(str(tls[0]), str(tls[1]))
        # What the node's WSMan: drive shows `hyperv-ci lab check` (sim/lab_probe.py).
        set_wsman(self.model, self.config, tls is not None)
        self._lock = threading.Lock()
        self._shells: dict[str, SimShell] = {}
        self._httpd: WSManHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def scripts(self) -> list[tuple[str, str, str]]:
        """Every script received: (node, step, text), in order."""
        return self.model.scripts

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port}/wsman"

    def start(self) -> SimWinRMServer:
        """Listen (on `port`, or a free one) and serve in a background thread."""
        # Negotiate/NTLM always; Basic only if `config.allow_basic` (the HTTP layer checks).
        CREDENTIALS.add(self.username, self._password)
        try:
            self._httpd = WSManHTTPServer(
                (self.host, self.port), self._dispatch, self._authorized, self.ssl_context,
                ntlm=True, config=self.config, stats=self.stats,
            )
        except BaseException:
            CREDENTIALS.remove(self.username)
            raise
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sim-winrm-{self.node_name}",
            daemon=True,
        )
        self._thread.start()
        self.model.set_alive(True)
        logger.info("simulated WinRM node %s at %s", self.node_name, self.url)
        return self

    def stop(self) -> None:
        """Stop serving; end every connection and command; join all threads."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        CREDENTIALS.remove(self.username)
        httpd.shutdown()
        with self._lock:
            shells = list(self._shells.values())
            self._shells.clear()
        commands = [c for shell in shells for c in shell.commands.values()]
        for command in commands:
            command.terminate()
        httpd.reset_connections()
        httpd.server_close()  # joins the handler threads
        for command in commands:
            if command.thread is not None:
                command.thread.join()
        if self._thread is not None:
            self._thread.join()

    def kill(self) -> None:
        """The whole node dies: connections reset, the port refuses new ones."""
        self.stop()
        self.model.set_alive(False)

    def revive(self) -> None:
        """The node is back (same port, files kept, services stopped, no shells)."""
        self.start()

    def __enter__(self) -> SimWinRMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def open_shells(self) -> int:
        """How many shells are open (created, not yet deleted or reaped as idle)."""
        with self._lock:
            self._reap_idle()
            return len(self._shells)

    def _authorized(self, header: str) -> bool:
        return any(hmac.compare_digest(header.encode(), good.encode()) for good in self._auth)

    # -- SOAP --
    def _dispatch(self, body: bytes) -> tuple[int, bytes]:
        request = wsman_xml.parse_request(body)
        if request is None:
            return 400, b""
        action = request.action
        self.stats[action] += 1
        with self._lock:
            self._reap_idle()
        try:
            handler = getattr(self, f"_do_{action.lower()}", None)
            if handler is None or request.header is None:
                raise WSManFault(
                    FAULT_ACTION, "w:ActionNotSupported", f"The action {action} is not supported."
                )
            reply_body = handler(request.header, request.body)
            return 200, wsman_xml.envelope(action + "Response", request.message_id, reply_body)
        except WSManFault as fault:
            self.stats[f"{action}.fault.{fault.code}"] += 1
            return 500, wsman_xml.envelope(
                "fault", request.message_id, [wsman_xml.fault_body(fault, self.node_name)]
            )

    def _reap_idle(self) -> None:
        """Delete the shells no request has named for IdleTimeout (call with the lock held).

        "Installation and configuration for Windows Remote Management", WinRS IdleTimeout:
        the remote shell is deleted after that time without activity; later requests
        naming it get the shell-not-found fault. Its commands end with it.
        """
        now = self._clock()
        for shell_id, shell in list(self._shells.items()):
            if now - shell.last_used >= self.config.idle_timeout:
                del self._shells[shell_id]
                self.stats["Shell.idle-deleted"] += 1
                for command in shell.commands.values():
                    command.terminate()

    def _shell(self, header: ET.Element) -> SimShell:
        shell_id = wsman_xml.selector(header, "ShellId")
        with self._lock:
            shell = self._shells.get(shell_id)
            if shell is not None:
                shell.last_used = self._clock()
        if shell is None:
            raise WSManFault(
                FAULT_SHELL_NOT_FOUND,
                "w:InvalidSelectors",
                "The request for the Windows Remote Shell with ShellId "
                f"{shell_id} failed because the shell was not found on the server.",
            )
        return shell

    @staticmethod
    def _command(shell: SimShell, element: ET.Element | None) -> SimCommand:
        command = shell.commands.get(element.get("CommandId", "") if element is not None else "")
        if command is None:
            raise WSManFault(
                FAULT_SHELL_NOT_FOUND, "w:InvalidParameter", "The command was not found."
            )
        return command

    def _do_create(self, header: ET.Element, body: ET.Element | None) -> list[ET.Element]:
        codepage = int(wsman_xml.options(header).get("WINRS_CODEPAGE", "437") or 437)
        try:
            codecs.lookup("utf-8" if codepage == 65001 else f"cp{codepage}")
        except LookupError:
            raise WSManFault(
                FAULT_INVALID_CODEPAGE, "w:InvalidParameter", f"Code page {codepage} is not valid."
            ) from None
        shell = SimShell(str(uuid.uuid4()).upper(), codepage, self._clock())
        with self._lock:
            # MS-WSMV 2.2.4.42 WinrsType MaxShellsPerUser (30) and 3.1.4.5.2.1: the Create
            # over the quota gets a wsman:QuotaLimit fault. The code (0x803381A5,
            # ERROR_WSMAN_QUOTA_MAX_SHELLS) and the text are what Windows sends. The node
            # has one user, so every shell is that user's.
            if len(self._shells) >= self.config.max_shells_per_user:
                limit = self.config.max_shells_per_user
                raise WSManFault(
                    FAULT_QUOTA_MAX_SHELLS,
                    "w:QuotaLimit",
                    "The WS-Management service cannot process the request. This user is "
                    f"allowed a maximum number of {limit} concurrent shells, which has been "
                    "exceeded. Close existing shells or raise the quota for this user.",
                )
            self._shells[shell.shell_id] = shell
        return wsman_xml.shell_created(self.url, shell.shell_id)

    def _do_command(self, header: ET.Element, body: ET.Element | None) -> list[ET.Element]:
        shell = self._shell(header)
        command_line = wsman_xml.command_line(body)
        encoding = "utf-8" if shell.codepage == 65001 else f"cp{shell.codepage}"
        command = SimCommand(
            str(uuid.uuid4()).upper(), codecs.getincrementalencoder(encoding)("replace")
        )
        shell.commands[command.command_id] = command

        def run() -> None:
            try:
                code = self.model.execute(command_line, command)
            except Exception:  # the model is part of the test rig: report, don't hang the client
                logger.exception("simulated command failed")
                code = 1
            with command.cond:
                if command.exit_code is None:
                    command.exit_code = code
                command.cond.notify_all()

        command.thread = threading.Thread(
            target=run, name=f"sim-cmd-{command.command_id[:8]}", daemon=True
        )
        command.thread.start()
        return wsman_xml.command_started(command.command_id)

    def _do_send(self, header: ET.Element, body: ET.Element | None) -> list[ET.Element]:
        shell = self._shell(header)
        stream = body.find(f"{q('rsp', 'Send')}/{q('rsp', 'Stream')}") if body is not None else None
        command = self._command(shell, stream)
        try:
            data = base64.b64decode((stream.text if stream is not None else "") or "")
        except binascii.Error:
            raise WSManFault(
                FAULT_INVALID_PARAMETER, "w:InvalidParameter", "The stdin data is not base64."
            ) from None
        with command.cond:
            command.stdin.extend(data)
            if stream is not None and stream.get("End", "").lower() == "true":
                command.stdin_closed = True
            command.cond.notify_all()
        return wsman_xml.reply("SendResponse")

    def _do_receive(self, header: ET.Element, body: ET.Element | None) -> list[ET.Element]:
        shell = self._shell(header)
        desired = (
            body.find(f"{q('rsp', 'Receive')}/{q('rsp', 'DesiredStream')}")
            if body is not None
            else None
        )
        command = self._command(shell, desired)
        # MS-WSMV 3.1.4.14: with no output the Receive is held until the client's
        # OperationTimeout, then answered with the 2150858793 fault (the client asks
        # again); 3.1.4.1.6: no OperationTimeout, or one above MaxTimeoutms, means MaxTimeoutms.
        limit = self.config.max_timeout
        timeout = header.findtext(q("w", "OperationTimeout"))
        hold = min(wsman_xml.seconds(timeout, limit), limit)
        self.holds.append(hold)
        with command.cond:
            command.cond.wait_for(
                lambda: (
                    command.stdout
                    or command.stderr
                    or command.exit_code is not None
                    or command.drop_pending
                    or self._httpd is None
                ),
                timeout=hold,
            )
            shell.last_used = self._clock()  # a held Receive is activity till it returns
            if command.drop_pending or self._httpd is None:
                command.drop_pending = False
                self.stats["Receive.dropped"] += 1
                raise DropConnection
            if not (command.stdout or command.stderr or command.exit_code is not None):
                self.stats["Receive.timeout"] += 1
                raise WSManFault(
                    FAULT_TIMEOUT,
                    "w:TimedOut",
                    "The WS-Management service cannot complete the "
                    "operation within the time specified in OperationTimeout.",
                )
            out = bytes(command.stdout[:MAX_RECEIVE_BYTES])
            del command.stdout[: len(out)]
            err = bytes(command.stderr[: MAX_RECEIVE_BYTES - len(out)])
            del command.stderr[: len(err)]
            done = command.exit_code is not None and not command.stdout and not command.stderr
            exit_code = command.exit_code
        return wsman_xml.received(command.command_id, out, err, done=done, exit_code=exit_code)

    def _do_signal(self, header: ET.Element, body: ET.Element | None) -> list[ET.Element]:
        shell = self._shell(header)
        signal_el = body.find(q("rsp", "Signal")) if body is not None else None
        command = self._command(shell, signal_el)
        code = (signal_el.findtext(q("rsp", "Code"), "") if signal_el is not None else "").rsplit(
            "/", 1
        )[-1]
        if code.lower() in ("terminate", "ctrl_c", "ctrl_break") and command.terminate():
            self.signals.append((command.step, code.lower()))
        return wsman_xml.reply("SignalResponse")

    def _do_delete(self, header: ET.Element, body: ET.Element | None) -> list[ET.Element]:
        shell = self._shell(header)
        with self._lock:
            self._shells.pop(shell.shell_id, None)
        for command in shell.commands.values():
            command.terminate()
        return []
