"""The HTTP(S) transport of the simulated WinRM endpoint.

POST /wsman with Basic or NTLM auth (sealed bodies: sim/wsman_ntlm.py),
optional TLS, and the ways a real node's connection ends: a 401 challenge,
a reset (`DropConnection`), or every open connection cut when the node
stops. It is separate from sim/winrm.py so the server there reads as the
WS-Management shell state machine only; this module knows nothing about
SOAP and hands each request body to `dispatch`.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import socket
import ssl
import struct
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from spnego.exceptions import SpnegoError

from sim.wsman_ntlm import CONTENT_TYPE, EnvelopeError, NTLMConnection, is_sealed

logger = logging.getLogger(__name__)

#: request body → (HTTP status, reply body); may raise DropConnection.
Dispatch = Callable[[bytes], tuple[int, bytes]]


class DropConnection(Exception):
    """Raised by a dispatcher: reset the TCP connection instead of answering."""


class WSManHTTPServer(ThreadingHTTPServer):
    """Serves POST /wsman; tracks every accepted connection so `reset_connections` can end it."""

    daemon_threads = False  # handler threads are joined on close: no leaked threads
    block_on_close = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        dispatch: Dispatch,
        authorized: Callable[[str], bool],
        ssl_context: ssl.SSLContext | None,
        *,
        ntlm: bool = False,
        stats: Counter[str] | None = None,
    ) -> None:
        self.dispatch = dispatch
        self.authorized = authorized  # checks a Basic Authorization header
        self.ntlm = ntlm  # also accept Negotiate/NTLM (credentials in sim.wsman_ntlm)
        self.stats = Counter[str]() if stats is None else stats  # "ntlm" logons, "sealed" bodies
        self.ssl_context = ssl_context
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def reset_connections(self) -> None:
        """Shut down every connection still open (the clients see them end)."""
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def get_request(self) -> tuple[socket.socket, object]:
        sock, addr = self.socket.accept()
        # Headers and body go out as two writes: without this, Nagle holds the body
        # for the client's delayed ACK (~40 ms a reply), which no real node does.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Tracked here, in the accept loop, so stop() sees every connection ever accepted.
        self._track(sock, add=True)
        if self.ssl_context is not None:
            # The handshake happens in the handler's thread, never in the accept loop.
            ssl_sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
            self._track(sock, add=False)
            self._track(ssl_sock, add=True)
            return ssl_sock, addr
        return sock, addr

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        self._track(request, add=False)
        super().shutdown_request(request)

    def handle_error(self, request: object, client_address: object) -> None:
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: WSManHTTPServer

    def setup(self) -> None:
        super().setup()
        self._ntlm: NTLMConnection | None = None  # NTLM authenticates the connection
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
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?")[0].rstrip("/") != "/wsman":
            self._reply(404, b"", "text/plain")
            return
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        handshake = self.server.ntlm and scheme.lower() in ("negotiate", "ntlm")
        if handshake:
            if not self._ntlm_step(scheme, token):
                return  # a challenge, or a refusal, went back
        elif not (self._ntlm and self._ntlm.complete) and not self.server.authorized(header):
            self._challenge()
            return
        sealed = self._ntlm is not None and is_sealed(self.headers.get("Content-Type", ""))
        if (self._ntlm is not None and not sealed and body
                and not isinstance(self.connection, ssl.SSLSocket)):
            # Windows' default (AllowUnencrypted=false): over http, NTLM traffic is sealed.
            self.server.stats["unsealed-refused"] += 1
            self._reply(400, b"", "text/plain")
            return
        if sealed:
            assert self._ntlm is not None
            try:
                body = self._ntlm.unseal(body)
            except EnvelopeError:
                logger.debug("refusing a request whose encryption does not verify", exc_info=True)
                self.close_connection = True
                self._reply(400, b"", "text/plain")
                return
            self.server.stats["sealed"] += 1
        if handshake and not body:
            # The request that completes an NTLM handshake may carry nothing (pywinrm's
            # encryption set-up); Windows answers it with an empty 200.
            self._reply(200, b"", "application/soap+xml;charset=UTF-8")
            return
        try:
            status, reply = self.server.dispatch(body)
        except DropConnection:
            # SO_LINGER 0 makes close() send a RST: the client sees "connection reset".
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if sealed:
            assert self._ntlm is not None
            self._reply(status, self._ntlm.seal(reply), CONTENT_TYPE)
        else:
            self._reply(status, reply, "application/soap+xml;charset=UTF-8")

    def _ntlm_step(self, scheme: str, token: str) -> bool:
        """One leg of the NTLM handshake; True once it completed with this request."""
        if self._ntlm is None or self._ntlm.complete:
            self._ntlm = NTLMConnection()  # a new handshake starts over
        try:
            answer = self._ntlm.step(base64.b64decode(token, validate=True))
        except (SpnegoError, ValueError):
            logger.debug("NTLM authentication refused", exc_info=True)
            self._ntlm = None
            self._challenge()
            return False
        if not self._ntlm.complete:
            self.send_response(401)
            self.send_header("WWW-Authenticate",
                             f"{scheme} {base64.b64encode(answer or b'').decode('ascii')}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False
        self.server.stats["ntlm"] += 1
        return True

    def _challenge(self) -> None:
        self.send_response(401)
        if self.server.ntlm:
            self.send_header("WWW-Authenticate", "Negotiate")
        self.send_header("WWW-Authenticate", 'Basic realm="WSMAN"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
