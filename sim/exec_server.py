"""A small paramiko SSH server with exec + SFTP, for `make demo` where sshd cannot run.

Commands are split with `shlex.split` and run with `subprocess` (no shell
of its own), each in a new session so that closing the channel kills the
whole process group. Public-key auth for one user and one key; the same
public shape as `sim.sshd.OpenSSHServer`.
"""

from __future__ import annotations

import errno
import getpass
import logging
import os
import shlex
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)
from paramiko.sftp import SFTP_OK

from ci.config import NodeConfig
from sim.ssh_logging import quiet_client_hangups
from sim.sshd import HOST, node_config

logger = logging.getLogger(__name__)


def _new_key(path: Path) -> paramiko.Ed25519Key:
    if not path.exists():
        key = ed25519.Ed25519PrivateKey.generate()
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
    return paramiko.Ed25519Key.from_private_key_file(str(path))


class _SFTPHandle(paramiko.SFTPHandle):
    # paramiko's SFTPServer reads these attributes; its stubs do not declare them.
    filename: str
    readfile: BinaryIO
    writefile: BinaryIO

    def stat(self) -> paramiko.SFTPAttributes | int:
        try:
            return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno or errno.EIO)

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        try:
            paramiko.SFTPServer.set_file_attr(self.filename, attr)
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno or errno.EIO)
        return SFTP_OK


def _errno(call: Callable[..., Any]) -> Callable[..., Any]:
    """Map OSError to an SFTP status code, as SFTP servers must."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno or errno.EIO)
    return wrapper


class _SFTPServer(paramiko.SFTPServerInterface):
    """The real file system, with absolute paths as given (relative ones from $HOME)."""

    def canonicalize(self, path: str) -> str:
        return os.path.normpath(os.path.join(os.path.expanduser("~"), path))

    @_errno
    def list_folder(self, path: str) -> list[paramiko.SFTPAttributes] | int:
        path = self.canonicalize(path)
        out = []
        for name in os.listdir(path):
            attr = paramiko.SFTPAttributes.from_stat(os.lstat(os.path.join(path, name)))
            attr.filename = name
            out.append(attr)
        return out

    @_errno
    def stat(self, path: str) -> paramiko.SFTPAttributes | int:
        return paramiko.SFTPAttributes.from_stat(os.stat(self.canonicalize(path)))

    @_errno
    def lstat(self, path: str) -> paramiko.SFTPAttributes | int:
        return paramiko.SFTPAttributes.from_stat(os.lstat(self.canonicalize(path)))

    @_errno
    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> _SFTPHandle | int:
        path = self.canonicalize(path)
        mode = attr.st_mode if attr is not None and attr.st_mode is not None else 0o666
        fd = os.open(path, flags | getattr(os, "O_BINARY", 0), mode & 0o7777)
        fobj: BinaryIO
        if flags & os.O_WRONLY:
            fobj = os.fdopen(fd, "ab" if flags & os.O_APPEND else "wb")
        elif flags & os.O_RDWR:
            fobj = os.fdopen(fd, "a+b" if flags & os.O_APPEND else "r+b")
        else:
            fobj = os.fdopen(fd, "rb")
        handle = _SFTPHandle(flags)
        handle.filename = path
        handle.readfile = fobj
        handle.writefile = fobj
        return handle

    @_errno
    def remove(self, path: str) -> int:
        os.remove(self.canonicalize(path))
        return SFTP_OK

    @_errno
    def rename(self, oldpath: str, newpath: str) -> int:
        os.rename(self.canonicalize(oldpath), self.canonicalize(newpath))
        return SFTP_OK

    @_errno
    def posix_rename(self, oldpath: str, newpath: str) -> int:
        os.replace(self.canonicalize(oldpath), self.canonicalize(newpath))
        return SFTP_OK

    @_errno
    def mkdir(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        os.mkdir(self.canonicalize(path))
        return SFTP_OK

    @_errno
    def rmdir(self, path: str) -> int:
        os.rmdir(self.canonicalize(path))
        return SFTP_OK

    @_errno
    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        paramiko.SFTPServer.set_file_attr(self.canonicalize(path), attr)
        return SFTP_OK


class _Server(paramiko.ServerInterface):
    def __init__(self, owner: ParamikoExecServer) -> None:
        self.owner = owner

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return OPEN_SUCCEEDED
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if username == self.owner.username and key == self.owner.client_key:
            return AUTH_SUCCESSFUL
        return AUTH_FAILED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        try:
            argv = shlex.split(command.decode("utf-8"))
        except ValueError:
            return False
        if not argv:
            return False
        threading.Thread(target=_run_command, args=(channel, argv, self.owner.environment()),
                         daemon=True,
                         name="sim-exec").start()
        return True


def _run_command(channel: paramiko.Channel, argv: list[str], env: dict[str, str]) -> None:
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True,
                                cwd=os.path.expanduser("~"), env=env)
    except OSError as exc:
        channel.sendall_stderr(f"{argv[0]}: {exc.strerror}\n".encode())
        channel.send_exit_status(127)
        channel.close()
        return

    def pump(stream: object, send: object) -> None:
        for chunk in iter(lambda: os.read(stream.fileno(), 32768), b""):  # type: ignore[attr-defined]
            try:
                send(chunk)  # type: ignore[operator]
            except (OSError, EOFError):
                return

    pumps = [threading.Thread(target=pump, args=(proc.stdout, channel.sendall), daemon=True),
             threading.Thread(target=pump, args=(proc.stderr, channel.sendall_stderr),
                              daemon=True)]
    for thread in pumps:
        thread.start()
    while True:
        try:
            code = proc.wait(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            transport = channel.get_transport()
            if channel.closed or transport is None or not transport.is_active():
                # The client went away: the command must not outlive its channel.
                os.killpg(proc.pid, signal.SIGKILL)
    for thread in pumps:
        thread.join(timeout=5)
    try:
        channel.send_exit_status(code if code >= 0 else 128 - code)
        channel.close()
    except (OSError, EOFError):
        pass


class ParamikoExecServer:
    """The exec + SFTP server on 127.0.0.1 (same attributes as OpenSSHServer)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir).resolve()
        self.host = HOST
        self.port = 0
        self.username = getpass.getuser()
        self.host_key_file = self.workdir / "host_ed25519"
        self.client_key_file = self.workdir / "client_ed25519"
        self.known_hosts_file = self.workdir / "known_hosts"
        # A directory put first on every command's PATH: the simulated controller's
        # system tools (sim/lab_probe.py), as sshd's SetEnv does in sim/sshd.py.
        self.path_prefix: Path | None = None
        self._sock: socket.socket | None = None
        self._transports: list[paramiko.Transport] = []
        self._thread: threading.Thread | None = None

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.path_prefix is not None:
            env["PATH"] = f"{self.path_prefix}{os.pathsep}{env.get('PATH', os.defpath)}"
        return env

    def start(self) -> ParamikoExecServer:
        """Create keys and known_hosts, listen on a free port and accept in a thread."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host_key = _new_key(self.host_key_file)
        self.client_key = _new_key(self.client_key_file)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((HOST, 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.known_hosts_file.write_text(
            f"[{HOST}]:{self.port} {self.host_key.get_name()} {self.host_key.get_base64()}\n",
            encoding="ascii")
        self._thread = threading.Thread(target=self._accept, daemon=True, name="sim-exec-accept")
        self._thread.start()
        return self

    def _accept(self) -> None:
        # A timeout, because closing a socket does not wake a thread blocked in accept().
        while (sock := self._sock) is not None:
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by stop()
            conn.settimeout(None)
            transport = paramiko.Transport(conn)
            transport.add_server_key(self.host_key)
            quiet_client_hangups(transport, "sim.exec_server.ssh")
            transport.set_subsystem_handler("sftp", paramiko.SFTPServer, _SFTPServer)
            self._transports.append(transport)
            # With an event, the handshake runs in the transport's thread, not here.
            transport.start_server(event=threading.Event(), server=_Server(self))

    def stop(self) -> None:
        """Stop accepting and drop every connection; idempotent."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        for transport in self._transports:
            transport.close()
        self._transports.clear()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def node_config(self, name: str = "devstack") -> NodeConfig:
        """A `NodeConfig` for this server."""
        return node_config(name, self.port, self.username, self.client_key_file,
                           self.known_hosts_file)

    def __enter__(self) -> ParamikoExecServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
