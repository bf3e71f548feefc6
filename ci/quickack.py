"""TCP connections that acknowledge what they receive at once (Linux's TCP_QUICKACK).

For request/answer links to Gerrit's sshd (`gerrit query`, `gerrit review`).
Gerrit's sshd is Apache MINA SSHD, which leaves Nagle's algorithm on: its
`CoreModuleProperties.TCP_NODELAY` ("tcp-nodelay") defaults to false, and
Gerrit's `SshDaemon` sets only keepalive on the session's socket. So the
small packets that end a command's answer (exit-status, EOF, close) wait
until our side acknowledges the output sent before them, and Linux delays
that ACK (about 40 ms) while we have nothing to send: every query took
~45 ms on a link with a 0.1 ms round trip (measured by bench/latency.py).
TCP_NODELAY on our socket only speeds our own sends; what the server sends
depends on our ACKs. The kernel leaves quick-ack mode by itself, so it is
armed again after every read.
"""

from __future__ import annotations

import socket

# Linux only; elsewhere the socket behaves as a plain one.
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class QuickAckSocket(socket.socket):
    """A TCP socket that acknowledges each read at once."""

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        data = super().recv(bufsize, flags)
        if _QUICKACK is not None and data:
            self.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return data


def open_connection(host: str, port: int, timeout: float) -> socket.socket:
    """A connected QuickAckSocket to `host`:`port` (each address tried in turn, as
    socket.create_connection does); raises OSError when none answers."""
    error: OSError | None = None
    for family, kind, proto, _name, address in socket.getaddrinfo(
            host, port, 0, socket.SOCK_STREAM):
        sock = QuickAckSocket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError(f"{host}:{port}: no address")
