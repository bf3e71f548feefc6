"""The HTTP(S) transport of the simulated WinRM endpoint.

POST /wsman with Negotiate/NTLM auth (sealed bodies: sim/wsman_ntlm.py) and,
when the node allows it, Basic; optional TLS; the service's refusals (Basic
disabled, unencrypted traffic, a request over MaxEnvelopeSizekb: settings in
sim/wsman_config.py); and the ways a real node's connection ends: a 401
challenge, a reset (`DropConnection`), or every open connection cut when the
node stops. It is separate from sim/winrm.py so the server there reads as
the WS-Management shell state machine only; this module knows nothing about
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

from sim.wsman_config import WinRMConfig
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
        config: WinRMConfig | None = None,
        stats: Counter[str] | None = None,
    ) -> None:
        self.dispatch = dispatch
        self.authorized = authorized  # checks a Basic Authorization header
        self.ntlm = ntlm  # also accept Negotiate/NTLM (credentials in sim.wsman_ntlm)
        self.config = config or WinRMConfig()
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
        self._auth_scheme = "Negotiate"  # as the client named it: the final token echoes it
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
        config = self.server.config
        encrypted_channel = isinstance(self.connection, ssl.SSLSocket)
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        handshake = self.server.ntlm and scheme.lower() in ("negotiate", "ntlm")
        final_token: bytes | None = None
        if handshake:
            done, final_token = self._ntlm_step(scheme, token)
            if not done:
                return  # a challenge, or a refusal, went back
        elif scheme.lower() == "basic":
            if not config.allow_basic:
                # Service/Auth/Basic=false (the default): the scheme is not offered and
                # a Basic request gets the 401 that names only what is enabled.
                self.server.stats["basic-refused"] += 1
                self._challenge()
                return
            if not encrypted_channel and not config.allow_unencrypted:
                # Service/AllowUnencrypted=false: Basic cannot encrypt the message, so
                # over http it is refused with a 401 (ansible's windows_setup guide,
                # "HTTP 401/Credentials Rejected"); over https TLS encrypts it.
                self.server.stats["unencrypted-refused"] += 1
                self._challenge()
                return
            if not self.server.authorized(header):
                self._challenge()
                return
        elif not (self._ntlm and self._ntlm.complete):
            self._challenge()
            return
        sealed = self._ntlm is not None and is_sealed(self.headers.get("Content-Type", ""))
        if (self._ntlm is not None and not sealed and body and not encrypted_channel
                and not config.allow_unencrypted):
            # AllowUnencrypted=false: an authenticated but unsealed message over http is
            # refused with a 500 and no SOAP body (pywinrm issue #129, Kerberos over http
            # without encryption: "error 500 ... server receive unencrypted message").
            self.server.stats["unencrypted-refused"] += 1
            self._reply(500, b"", "text/plain", final_token)
            return
        if sealed:
            assert self._ntlm is not None
            try:
                body = self._ntlm.unseal(body)
            except EnvelopeError:
                logger.debug("refusing a request whose encryption does not verify", exc_info=True)
                self.close_connection = True
                self._reply(400, b"", "text/plain", final_token)
                return
            self.server.stats["sealed"] += 1
        if len(body) > config.max_envelope_bytes:
            # MS-WSMV 2.2.4.10: MaxEnvelopeSizekb limits the client's request packets;
            # Windows answers a larger one with HTTP 413 and no body (the Windows client
            # reports it as ERROR_WSMAN_HTTP_REQUEST_TOO_LARGE_STATUS, 2150859025: "the
            # request size exceeded the configured MaxEnvelopeSize quota").
            self.server.stats["envelope-too-large"] += 1
            self._reply(413, b"", "text/plain", final_token)
            return
        if handshake and not body:
            # The request that completes an NTLM handshake may carry nothing (pywinrm's
            # encryption set-up); Windows answers it with an empty 200.
            self._reply(200, b"", "application/soap+xml;charset=UTF-8", final_token)
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
            self._reply(status, self._ntlm.seal(reply), CONTENT_TYPE, final_token)
        else:
            self._reply(status, reply, "application/soap+xml;charset=UTF-8", final_token)

    def _ntlm_step(self, scheme: str, token: str) -> tuple[bool, bytes | None]:
        """One leg of the handshake: (completed with this request, the acceptor's final token).

        SPNEGO (what pypsrp's `auth="negotiate"` sends) ends with a token from the
        acceptor (the accept-complete NegTokenResp with its mechListMIC, RFC 4178 §5);
        Windows returns it in the WWW-Authenticate header of the response to the request
        that completed the handshake, and the client needs it to finish its context.
        Raw NTLM (pywinrm) has none.
        """
        if self._ntlm is None or self._ntlm.complete:
            self._ntlm = NTLMConnection()  # a new handshake starts over
        try:
            answer = self._ntlm.step(base64.b64decode(token, validate=True))
        except (SpnegoError, ValueError):
            logger.debug("NTLM authentication refused", exc_info=True)
            self._ntlm = None
            self._challenge()
            return False, None
        if not self._ntlm.complete:
            self.send_response(401)
            self.send_header("WWW-Authenticate",
                             f"{scheme} {base64.b64encode(answer or b'').decode('ascii')}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False, None
        self.server.stats["ntlm"] += 1
        self._auth_scheme = scheme
        return True, answer or None

    def _challenge(self) -> None:
        self.send_response(401)
        if self.server.ntlm:
            self.send_header("WWW-Authenticate", "Negotiate")
        if self.server.config.allow_basic:
            self.send_header("WWW-Authenticate", 'Basic realm="WSMAN"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _reply(self, status: int, body: bytes, content_type: str,
               auth_token: bytes | None = None) -> None:
        self.send_response(status)
        if auth_token:
            self.send_header("WWW-Authenticate",
                             f"{self._auth_scheme} {base64.b64encode(auth_token).decode('ascii')}")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
