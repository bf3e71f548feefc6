"""ci.quickack: command connections to Gerrit acknowledge every read at once."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ci import quickack
from ci.gerrit import GerritClient
from sim.gerrit import SimGerrit, make_client_identity

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="Linux only")


class _Recording(quickack.QuickAckSocket):
    """Counts the options set, to see the re-arming without timing anything."""

    armed = 0

    def setsockopt(self, *args: object) -> None:
        if args[:2] == (socket.IPPROTO_TCP, socket.TCP_QUICKACK):
            type(self).armed += 1
        super().setsockopt(*args)  # type: ignore[call-overload]


@pytest.fixture
def server() -> Iterator[socket.socket]:
    """A TCP server that answers every read with two writes (as sshd ends a command:
    output, then exit status) and closes when the client does."""
    listening = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listening.accept()
        with conn:
            while data := conn.recv(100):
                conn.sendall(b"answer " + data + b"\n")
                conn.sendall(b"status 0\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listening
    listening.close()
    thread.join(5)


def test_every_read_with_data_arms_quick_ack_again(server: socket.socket,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel leaves quick-ack mode by itself: arming it once is not enough.
    monkeypatch.setattr(quickack, "QuickAckSocket", _Recording)
    _Recording.armed = 0
    sock = quickack.open_connection("127.0.0.1", server.getsockname()[1], 5)
    assert isinstance(sock, _Recording)
    reads = 0
    for question in ("q1 修复", "q2 café", "q3"):
        sock.sendall(question.encode())
        got = b""
        while got.count(b"\n") < 2:
            got += sock.recv(100)
            reads += 1
        assert got.decode().startswith(f"answer {question}\n")
    assert _Recording.armed == reads
    sock.shutdown(socket.SHUT_WR)
    assert sock.recv(100) == b""
    assert _Recording.armed == reads  # nothing to acknowledge at EOF
    sock.close()


def test_a_closed_port_is_an_os_error() -> None:
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(OSError):
        quickack.open_connection("127.0.0.1", port, 5)


def test_gerrit_commands_use_a_quick_ack_connection(tmp_path: Path) -> None:
    key_file, key_line = make_client_identity(tmp_path / "client", "hyperv-ci")
    sim = SimGerrit(tmp_path / "state", users={"hyperv-ci": key_line}).start()
    client = GerritClient(sim.client_config("hyperv-ci", key_file), timeout=10)
    try:
        assert client.version()
        transport = client._transport()
        assert isinstance(transport.sock, quickack.QuickAckSocket)
        # Our own small requests still go out without waiting (Nagle off our side).
        assert transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        client.close()
        sim.stop()
