"""A loopback TCP proxy that can freeze its connections: the half-open link of a real network.

A NAT or firewall that forgets a connection, or a peer that vanishes, leaves
both ends' sockets open while nothing gets through either way; TCP may not
notice for hours. `freeze()` does that to every connection open now: they stop
forwarding both ways and nothing is closed. Connections made later forward
normally (the network came back; only the old state was lost).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class _Link:
    client: socket.socket
    upstream: socket.socket
    frozen: threading.Event = field(default_factory=threading.Event)


class FreezingProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target_port` until frozen or closed."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.accepted = 0
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def __enter__(self) -> FreezingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def freeze(self) -> int:
        """Stop forwarding on every open connection; returns how many were frozen."""
        with self._lock:
            for link in self._links:
                link.frozen.set()
            return len(self._links)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            links = list(self._links)
        for link in links:
            for sock in (link.client, link.upstream):
                with contextlib.suppress(OSError):
                    sock.close()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            link = _Link(client, upstream)
            with self._lock:
                self._links.append(link)
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(link, src, dst), name="proxy-pump",
                                 daemon=True).start()

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.2)
        while not self._closed.is_set():
            if link.frozen.is_set():
                # Frozen: read nothing, send nothing, close nothing.
                self._closed.wait(0.2)
                continue
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if link.frozen.is_set():
                continue  # what arrived as the link froze is lost, as on the wire
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            try:
                dst.sendall(data)
            except OSError:
                return
