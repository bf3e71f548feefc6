"""A WS-Management (WinRM) server on loopback that real pywinrm talks to unchanged.

It speaks the contract of research/ws-management.md: shells (Create with
WINRS_CODEPAGE), Command, Send, long-polled Receive (OperationTimeout fault
2150858793), Signal, Delete; Basic auth; optional TLS. What the commands do
is answered by the Hyper-V host model (sim/hyperv_host.py).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import contextlib
import datetime
import hmac
import ipaddress
import logging
import re
import socket
import ssl
import struct
import threading
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from sim.hyperv_host import Faults, HyperVHost

logger = logging.getLogger(__name__)

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)
SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
STATE = NS["rsp"] + "/CommandState/"
FAULT_TIMEOUT = 2150858793
FAULT_SHELL_NOT_FOUND = 2150858843
FAULT_ACTION = 2150858891
MAX_RECEIVE_BYTES = 100 * 1024  # raw output per Receive: stays under MaxEnvelopeSize once base64'd
EXIT_TERMINATED = -1073741510  # STATUS_CONTROL_C_EXIT


def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


class _Fault(Exception):
    def __init__(self, code: int, subcode: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.subcode, self.reason = code, subcode, reason


class _Drop(Exception):
    """Reset the TCP connection instead of answering."""


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
        data = self.encoder.encode(text)
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


@dataclass
class SimShell:
    shell_id: str
    codepage: int
    commands: dict[str, SimCommand] = field(default_factory=dict)


@dataclass(frozen=True)
class TLSFiles:
    ca_cert: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path, common_name: str = "127.0.0.1") -> TLSFiles:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"hyperv-ci sim CA {uuid.uuid4().hex[:8]}")]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files


def _seconds(duration: str | None, default: float) -> float:
    match = re.fullmatch(r"PT(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?", (duration or "").strip())
    if not match or not any(match.groups()):
        return default
    return float(match.group(1) or 0) * 60 + float(match.group(2) or 0)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False  # handler threads are joined on close: no leaked threads
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, sim: SimWinRMServer, address: tuple[str, int]) -> None:
        self.sim = sim
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, object]:
        sock, addr = self.socket.accept()
        # Tracked here, in the accept loop, so stop() sees every connection ever accepted.
        self.sim._track(sock, add=True)
        if self.sim.ssl_context is not None:
            # The handshake happens in the handler's thread, never in the accept loop.
            ssl_sock = self.sim.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
            self.sim._track(sock, add=False)
            self.sim._track(ssl_sock, add=True)
            return ssl_sock, addr
        return sock, addr

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        self.sim._track(request, add=False)
        super().shutdown_request(request)

    def handle_error(self, request: object, client_address: object) -> None:
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.settimeout(10)
            self.connection.do_handshake()
            self.connection.settimeout(None)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def do_POST(self) -> None:
        sim = self.server.sim
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?")[0].rstrip("/") != "/wsman":
            self._reply(404, b"", "text/plain")
            return
        if not sim._authorized(self.headers.get("Authorization", "")):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="WSMAN"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        try:
            status, reply = sim._dispatch(body)
        except _Drop:
            # SO_LINGER 0 makes close() send a RST: the client sees "connection reset".
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        self._reply(status, reply, "application/soap+xml;charset=UTF-8")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


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
        max_hold: float = 1.0,
    ) -> None:
        self.node_name = node_name
        self.host = "127.0.0.1"
        self.port = port
        self.faults = Faults()
        self.model = HyperVHost(node_name, Path(lab_dir), self.faults)
        self.stats: Counter[str] = Counter()
        self.signals: list[
            tuple[str, str]
        ] = []  # (step, signal code) that stopped a running command
        self.max_hold = max_hold
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
        self._lock = threading.Lock()
        self._shells: dict[str, SimShell] = {}
        self._conns: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
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
        self._httpd = _HTTPServer(self, (self.host, self.port))
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
        httpd.shutdown()
        with self._lock:
            shells = list(self._shells.values())
            self._shells.clear()
            conns = list(self._conns)
        commands = [c for shell in shells for c in shell.commands.values()]
        for command in commands:
            command.terminate()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
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

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def _authorized(self, header: str) -> bool:
        return any(hmac.compare_digest(header.encode(), good.encode()) for good in self._auth)

    # -- SOAP --
    def _dispatch(self, body: bytes) -> tuple[int, bytes]:
        try:
            # Loopback test server: requests come from the client under test.
            envelope = ET.fromstring(body)  # noqa: S314
        except ET.ParseError:
            return 400, b""
        header = envelope.find(_q("s", "Header"))
        message_id = header.findtext(_q("a", "MessageID"), "") if header is not None else ""
        action = (header.findtext(_q("a", "Action"), "") if header is not None else "").rsplit(
            "/", 1
        )[-1]
        self.stats[action] += 1
        try:
            handler = getattr(self, f"_do_{action.lower()}", None)
            if handler is None or header is None:
                raise _Fault(
                    FAULT_ACTION, "w:ActionNotSupported", f"The action {action} is not supported."
                )
            reply_body = handler(header, envelope.find(_q("s", "Body")))
            return 200, self._envelope(action + "Response", message_id, reply_body)
        except _Fault as fault:
            self.stats[f"{action}.fault.{fault.code}"] += 1
            return 500, self._envelope("fault", message_id, [self._fault_body(fault)])

    def _envelope(self, action: str, relates_to: str, body: list[ET.Element]) -> bytes:
        env = ET.Element(_q("s", "Envelope"))
        head = ET.SubElement(env, _q("s", "Header"))
        ET.SubElement(head, _q("a", "Action")).text = f"{NS['rsp']}/{action}"
        ET.SubElement(head, _q("a", "MessageID")).text = f"uuid:{str(uuid.uuid4()).upper()}"
        ET.SubElement(head, _q("a", "RelatesTo")).text = relates_to
        soap_body = ET.SubElement(env, _q("s", "Body"))
        soap_body.extend(body)
        return ET.tostring(env, encoding="utf-8", xml_declaration=True)

    def _fault_body(self, fault: _Fault) -> ET.Element:
        root = ET.Element(_q("s", "Fault"))
        code = ET.SubElement(root, _q("s", "Code"))
        ET.SubElement(code, _q("s", "Value")).text = "s:Receiver"
        ET.SubElement(
            ET.SubElement(code, _q("s", "Subcode")), _q("s", "Value")
        ).text = fault.subcode
        reason = ET.SubElement(ET.SubElement(root, _q("s", "Reason")), _q("s", "Text"))
        reason.text = fault.reason
        reason.set("{http://www.w3.org/XML/1998/namespace}lang", "en-US")
        detail = ET.SubElement(
            ET.SubElement(root, _q("s", "Detail")),
            _q("f", "WSManFault"),
            {"Code": str(fault.code), "Machine": self.node_name},
        )
        ET.SubElement(detail, _q("f", "Message")).text = fault.reason
        return root

    def _shell(self, header: ET.Element) -> SimShell:
        shell_id = ""
        for selector in header.iter(_q("w", "Selector")):
            if selector.get("Name") == "ShellId":
                shell_id = selector.text or ""
        with self._lock:
            shell = self._shells.get(shell_id)
        if shell is None:
            raise _Fault(
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
            raise _Fault(FAULT_SHELL_NOT_FOUND, "w:InvalidParameter", "The command was not found.")
        return command

    def _do_create(self, header: ET.Element, body: ET.Element | None) -> list[ET.Element]:
        options = {o.get("Name", ""): (o.text or "") for o in header.iter(_q("w", "Option"))}
        codepage = int(options.get("WINRS_CODEPAGE", "437") or 437)
        try:
            codecs.lookup("utf-8" if codepage == 65001 else f"cp{codepage}")
        except LookupError:
            raise _Fault(
                2150859002, "w:InvalidParameter", f"Code page {codepage} is not valid."
            ) from None
        shell = SimShell(str(uuid.uuid4()).upper(), codepage)
        with self._lock:
            self._shells[shell.shell_id] = shell
        created = ET.Element(_q("x", "ResourceCreated"))
        ET.SubElement(created, _q("a", "Address")).text = self.url
        params = ET.SubElement(created, _q("a", "ReferenceParameters"))
        ET.SubElement(params, _q("w", "ResourceURI")).text = SHELL_URI
        selectors = ET.SubElement(params, _q("w", "SelectorSet"))
        ET.SubElement(selectors, _q("w", "Selector"), {"Name": "ShellId"}).text = shell.shell_id
        # pywinrm reads the Selector; Windows also answers the rsp:Shell, so do both.
        shell_el = ET.Element(_q("rsp", "Shell"))
        ET.SubElement(shell_el, _q("rsp", "ShellId")).text = shell.shell_id
        ET.SubElement(shell_el, _q("rsp", "ResourceUri")).text = SHELL_URI
        ET.SubElement(shell_el, _q("rsp", "State")).text = "Connected"
        return [created, shell_el]

    def _do_command(self, header: ET.Element, body: ET.Element | None) -> list[ET.Element]:
        shell = self._shell(header)
        line_el = body.find(_q("rsp", "CommandLine")) if body is not None else None
        if line_el is None:
            raise _Fault(2150858882, "w:InvalidParameter", "CommandLine is missing.")
        parts = [line_el.findtext(_q("rsp", "Command"), "")]
        parts += [a.text or "" for a in line_el.findall(_q("rsp", "Arguments"))]
        command_line = " ".join(p for p in parts if p)
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
        response = ET.Element(_q("rsp", "CommandResponse"))
        ET.SubElement(response, _q("rsp", "CommandId")).text = command.command_id
        return [response]

    def _do_send(self, header: ET.Element, body: ET.Element | None) -> list[ET.Element]:
        shell = self._shell(header)
        stream = (
            body.find(f"{_q('rsp', 'Send')}/{_q('rsp', 'Stream')}") if body is not None else None
        )
        command = self._command(shell, stream)
        try:
            data = base64.b64decode((stream.text if stream is not None else "") or "")
        except binascii.Error:
            raise _Fault(
                2150858882, "w:InvalidParameter", "The stdin data is not base64."
            ) from None
        with command.cond:
            command.stdin.extend(data)
            if stream is not None and stream.get("End", "").lower() == "true":
                command.stdin_closed = True
            command.cond.notify_all()
        return [ET.Element(_q("rsp", "SendResponse"))]

    def _do_receive(self, header: ET.Element, body: ET.Element | None) -> list[ET.Element]:
        shell = self._shell(header)
        desired = (
            body.find(f"{_q('rsp', 'Receive')}/{_q('rsp', 'DesiredStream')}")
            if body is not None
            else None
        )
        command = self._command(shell, desired)
        hold = min(_seconds(header.findtext(_q("w", "OperationTimeout")), 60.0), self.max_hold)
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
            if command.drop_pending or self._httpd is None:
                command.drop_pending = False
                self.stats["Receive.dropped"] += 1
                raise _Drop
            if not (command.stdout or command.stderr or command.exit_code is not None):
                self.stats["Receive.timeout"] += 1
                raise _Fault(
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
        response = ET.Element(_q("rsp", "ReceiveResponse"))
        for name, data in (("stdout", out), ("stderr", err)):
            if data:
                ET.SubElement(
                    response, _q("rsp", "Stream"), {"Name": name, "CommandId": command.command_id}
                ).text = base64.b64encode(data).decode("ascii")
        if done:
            for name in ("stdout", "stderr"):
                ET.SubElement(
                    response,
                    _q("rsp", "Stream"),
                    {"Name": name, "CommandId": command.command_id, "End": "true"},
                )
        state = ET.SubElement(
            response,
            _q("rsp", "CommandState"),
            {"CommandId": command.command_id, "State": STATE + ("Done" if done else "Running")},
        )
        if done:
            ET.SubElement(state, _q("rsp", "ExitCode")).text = str(exit_code)
        return [response]

    def _do_signal(self, header: ET.Element, body: ET.Element | None) -> list[ET.Element]:
        shell = self._shell(header)
        signal_el = body.find(_q("rsp", "Signal")) if body is not None else None
        command = self._command(shell, signal_el)
        code = (signal_el.findtext(_q("rsp", "Code"), "") if signal_el is not None else "").rsplit(
            "/", 1
        )[-1]
        if code.lower() in ("terminate", "ctrl_c", "ctrl_break") and command.terminate():
            self.signals.append((command.step, code.lower()))
        return [ET.Element(_q("rsp", "SignalResponse"))]

    def _do_delete(self, header: ET.Element, body: ET.Element | None) -> list[ET.Element]:
        shell = self._shell(header)
        with self._lock:
            self._shells.pop(shell.shell_id, None)
        for command in shell.commands.values():
            command.terminate()
        return []
