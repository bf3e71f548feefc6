"""A simulated Gerrit that speaks real SSH (paramiko's server side) on loopback.

Real paramiko clients (ours, gerritlib) connect with public-key auth and run
`gerrit version|query|review|stream-events` exactly as against Gerrit; the
answers come from `GerritState` (real git repositories, real event shapes).
An `admin` account, whose key the sim creates in its state dir, also runs the
`sim-*` control commands that `hyperv-ci-sim ...` sends from another shell;
the running sim advertises itself in `STATE_DIR/sim-gerrit.json`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)

from ci.config import GerritConfig
from sim.gerrit_commands import run_command
from sim.gerrit_labels import Range
from sim.gerrit_state import GerritState
from sim.ssh_logging import quiet_client_hangups

logger = logging.getLogger(__name__)

ADMIN_USER = "admin"
ADVERT_FILE = "sim-gerrit.json"
VERSION = "3.9.1-sim"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _ed25519_key_file(path: Path) -> str:
    """Create an OpenSSH ed25519 private key at `path` unless one exists; its public line."""
    if not path.exists():
        private = Ed25519PrivateKey.generate()
        _write_private(path, private.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.OpenSSH,
                                                   serialization.NoEncryption()))
    key = paramiko.Ed25519Key(filename=str(path))
    return f"{key.get_name()} {key.get_base64()}"


def make_client_identity(directory: Path, name: str = "client") -> tuple[Path, str]:
    """An ed25519 client key pair in `directory`: (private key file, OpenSSH public key line)."""
    key_file = directory / f"{name}_ed25519"
    line = _ed25519_key_file(key_file)
    key_file.with_suffix(".pub").write_text(f"{line} {name}\n", encoding="utf-8")
    return key_file, line


def _parse_public_key(line: str) -> tuple[str, bytes]:
    parts = line.split()
    if len(parts) < 2:
        raise ValueError(f"not an OpenSSH public key line: {line!r}")
    return parts[0], base64.b64decode(parts[1])


class _Server(paramiko.ServerInterface):
    """One SSH connection: authenticates the user, then runs each exec request in a thread."""

    def __init__(self, sim: SimGerrit) -> None:
        self.sim = sim
        self.username: str | None = None

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        allowed = self.sim.authorized_key(username)
        if allowed is not None and allowed == (key.get_name(), key.asbytes()):
            self.username = username
            return AUTH_SUCCESSFUL
        return AUTH_FAILED

    def check_global_request(self, kind: str, msg: paramiko.Message) -> bool:
        # Gerrit's sshd (Apache MINA sshd, server/global/KeepAliveHandler.java)
        # answers every `keepalive@*` request with SSH_MSG_REQUEST_FAILURE, and
        # RFC 4254 section 4 has a server answer any global request it does not
        # support that way: a reply, so a client's keepalive sees a live link.
        return False

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return OPEN_SUCCEEDED
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        if self.username is None:
            return False
        self.sim.spawn(self._run, channel, self.username, command)
        return True

    def _run(self, channel: paramiko.Channel, username: str, command: bytes) -> None:
        status = 128
        try:
            # The exec request's success reply is sent by the transport thread after
            # check_channel_exec_request returns; a command that closed its channel
            # before it would look refused. A round trip through that same thread
            # (it answers packets in order) guarantees the reply went first.
            channel.get_transport().global_request("keepalive@openssh.com", wait=True)
            status = run_command(self.sim, channel, username, command.decode("utf-8", "replace"))
        except (OSError, EOFError, paramiko.SSHException):
            status = 127  # the client went away
            logger.debug("sim gerrit: session lost", exc_info=True)
        except Exception:
            logger.exception("sim gerrit: command failed")
            with contextlib.suppress(OSError, EOFError):
                channel.sendall_stderr(b"fatal: internal server error\n")
        finally:
            with contextlib.suppress(OSError, EOFError):
                channel.send_exit_status(status)
                channel.close()


class SimGerrit:
    """The simulated Gerrit server: `start()`, then connect to 127.0.0.1:`port`."""

    def __init__(self, state_dir: Path, port: int = 0, users: dict[str, str] | None = None, *,
                 host: str = "127.0.0.1", query_limit: int = 500, stream_queue_size: int = 1024,
                 web_url: str = "https://review.example.org/",
                 grants: dict[str, dict[str, Range]] | None = None,
                 strict_labels: bool | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.root = self.state_dir / "gerrit"
        self.host = host
        self.query_limit = query_limit
        # Gerrit queues a bounded number of events per stream; past it, dropped-output.
        self.stream_queue_size = stream_queue_size
        # Label grants per account (default: Verified -1..+1, see sim.gerrit_labels).
        self.state = GerritState(self.root, web_url=web_url, grants=grants,
                                 strict_labels=strict_labels)
        self._host_key_file = self.root / "ssh_host_ed25519_key"
        _ed25519_key_file(self._host_key_file)
        self._host_key = paramiko.Ed25519Key(filename=str(self._host_key_file))
        self.admin_key_file, admin_line = make_client_identity(self.root, ADMIN_USER)
        self.known_hosts_file = self.root / "known_hosts"
        self._users = {ADMIN_USER: _parse_public_key(admin_line)}
        for name, line in (users or {}).items():
            self.add_user(name, line)
        self._requested_port = port
        self._sock: socket.socket | None = None
        self._stopping = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._transports: set[paramiko.Transport] = set()
        self._lock = threading.Lock()

    # -- users -------------------------------------------------------------------------------

    def add_user(self, username: str, public_key_line: str) -> None:
        """Authorize `username` to log in with this OpenSSH public key."""
        self._users[username] = _parse_public_key(public_key_line)

    def authorized_key(self, username: str) -> tuple[str, bytes] | None:
        """(key type, key blob) that `username` must present, or None if unknown."""
        return self._users.get(username)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port (valid after start())."""
        if self._sock is None:
            raise RuntimeError("the simulated Gerrit is not started")
        return int(self._sock.getsockname()[1])

    @property
    def stopping(self) -> threading.Event:
        """Set while the server shuts down; long-running commands watch it."""
        return self._stopping

    def host_key_line(self) -> str:
        """The known_hosts line for this server."""
        key = self._host_key
        return f"[{self.host}]:{self.port} {key.get_name()} {key.get_base64()}"

    def start(self) -> SimGerrit:
        """Listen, accept connections in the background and advertise in the state dir."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        sock.listen(64)
        sock.settimeout(0.2)
        self._sock = sock
        self._stopping.clear()
        self.known_hosts_file.write_text(self.host_key_line() + "\n", encoding="utf-8")
        self.spawn(self._accept_loop)
        advert = {"host": self.host, "port": self.port, "admin_user": ADMIN_USER,
                  "admin_key": str(self.admin_key_file.resolve()),
                  "known_hosts": str(self.known_hosts_file.resolve()), "pid": os.getpid()}
        (self.state_dir / ADVERT_FILE).write_text(json.dumps(advert, indent=2) + "\n",
                                                  encoding="utf-8")
        logger.info("sim gerrit listening on %s:%s", self.host, self.port)
        return self

    def stop(self) -> None:
        """Close every connection, stop every thread and release the port."""
        self._stopping.set()
        # The port first: a client connecting from now on is refused at once,
        # rather than left in the listen backlog, never sent a banner.
        if self._sock is not None:
            self._sock.close()
        with self._lock:
            transports = list(self._transports)
        for transport in transports:
            transport.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=10)
        advert = self.state_dir / ADVERT_FILE
        try:
            if json.loads(advert.read_text(encoding="utf-8")).get("pid") == os.getpid():
                advert.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> SimGerrit:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client_config(self, username: str, key_file: Path, **overrides: Any) -> GerritConfig:
        """A `GerritConfig` for `username` to reach this server (after start())."""
        fields: dict[str, Any] = {"host": self.host, "port": self.port, "username": username,
                                  "key_file": key_file, "known_hosts": self.known_hosts_file,
                                  "git_url": str(self.root / "git" / "{project}.git")}
        return GerritConfig(**{**fields, **overrides})

    def wait_for_streams(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Wait until `count` stream-events sessions listen (tests: the stream is live)."""
        deadline = time.monotonic() + timeout
        while self.state.subscriber_count() < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def emit_raw(self, line: str | bytes) -> None:
        """Send a recorded event line verbatim (bytes as they are) to every stream session."""
        self.state.emit_raw(line)

    def spawn(self, target: Callable[..., object], *args: object) -> threading.Thread:
        """Run `target(*args)` in a tracked thread that stop() joins."""

        def run() -> None:
            try:
                target(*args)
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=run, name="sim-gerrit", daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()
        return thread

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            conn.settimeout(None)
            # Nagle's algorithm stays on, as on Gerrit's sshd: Apache MINA SSHD's
            # CoreModuleProperties.TCP_NODELAY defaults to false and Gerrit's
            # SshDaemon sets only keepalive on a session's socket. A command's last
            # small packets then wait for the client's ACK (see ci/quickack.py).
            self.spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        transport = paramiko.Transport(conn)
        transport.local_version = f"SSH-2.0-GerritCodeReview_{VERSION}"
        transport.add_server_key(self._host_key)
        quiet_client_hangups(transport, "sim.gerrit.ssh")
        with self._lock:
            if self._stopping.is_set():
                # An unstarted Transport's close() leaves its socket open, and
                # the client would wait out its banner timeout.
                conn.close()
                return
            self._transports.add(transport)
        try:
            transport.start_server(server=_Server(self))
            # Exec requests start the commands; this loop only holds the accepted
            # channels (paramiko closes a channel that is garbage-collected).
            channels: list[paramiko.Channel] = []
            while transport.is_active() and not self._stopping.is_set():
                channel = transport.accept(timeout=0.2)
                channels = [c for c in channels if not c.closed]
                if channel is not None:
                    channels.append(channel)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            logger.debug("sim gerrit: connection ended: %s", exc)
        finally:
            transport.close()
            conn.close()
            with self._lock:
                self._transports.discard(transport)
