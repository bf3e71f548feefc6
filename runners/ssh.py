"""The SSH executor for Linux nodes (the devstack controller), on paramiko.

Host keys are checked against the node's known_hosts file (`RejectPolicy`);
no agent and no default keys are used. Commands are argument lists, sent as
`shlex.join(argv)` inside a small fixed `sh` wrapper that reports the
remote process group first (one line on stdout, stripped by
runners/ssh_session.py, which follows the running command), so a timeout, or
the caller's `should_stop` turning true, can kill the whole remote process
tree over a second channel.

Output is text (UTF-8, bad bytes replaced): a command whose output is
binary, such as `tempest run --subunit`, should redirect it to a file on the
node, to be fetched with `get`.
"""

from __future__ import annotations

import logging
import re
import shlex
import socket
import stat
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import paramiko

from ci.config import NodeConfig
from runners.base import (
    CommandAborted,
    CommandResult,
    ExecutorError,
    OutputSink,
    StopCheck,
)
from runners.ssh_session import WRAPPER, CommandSession

logger = logging.getLogger(__name__)

# No "--" before the negative pid: dash's kill builtin rejects it.
_KILLER = (
    'kill -TERM "-$1" 2>/dev/null || exit 0; i=0; '
    'while kill -0 "-$1" 2>/dev/null && [ "$i" -lt "$2" ]; do sleep 0.1; i=$((i+1)); done; '
    'kill -KILL "-$1" 2>/dev/null; exit 0'
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRANSPORT_ERRORS = (paramiko.SSHException, EOFError, ConnectionError, socket.timeout)
_CHUNK = 32768  # bytes an SFTP write sends at a time


class SSHExecutor:
    """Runs commands and moves files on one Linux node; thread-safe connection handling."""

    def __init__(self, node: NodeConfig, *, connect_timeout: float = 10.0,
                 keepalive: int = 15, kill_grace: float = 5.0) -> None:
        if node.ssh is None:
            raise ValueError(f"node {node.name} has no 'ssh' section")
        self.node = node
        self.node_name = node.name
        self.ssh = node.ssh
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.kill_grace = kill_grace
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._reader: paramiko.SFTPClient | None = None  # read_from's own channel
        self._reader_lock = threading.Lock()
        self._lock = threading.RLock()

    def _where(self) -> str:
        return f"{self.node_name} ({self.ssh.username}@{self.node.address}:{self.ssh.port})"

    # -- connection -------------------------------------------------------------
    def _transport(self) -> paramiko.Transport:
        """The live transport, connecting (or reconnecting after a drop) as needed."""
        with self._lock:
            if self._client is not None:
                transport = self._client.get_transport()
                if transport is not None and transport.is_active():
                    return transport
                logger.info("SSH connection to %s dropped; reconnecting", self._where())
                self._drop()
            client = paramiko.SSHClient()
            try:
                client.load_host_keys(str(self.ssh.known_hosts))
            except OSError as exc:
                raise ExecutorError(
                    f"cannot read known_hosts {self.ssh.known_hosts}: {exc.strerror}") from exc
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            try:
                client.connect(
                    self.node.address, port=self.ssh.port, username=self.ssh.username,
                    key_filename=str(self.ssh.key_file), allow_agent=False,
                    look_for_keys=False, timeout=self.connect_timeout,
                    banner_timeout=self.connect_timeout, auth_timeout=self.connect_timeout,
                )
            except (paramiko.SSHException, OSError, EOFError) as exc:
                client.close()
                raise ExecutorError(f"cannot connect to {self._where()}: {exc}") from exc
            transport = client.get_transport()
            assert transport is not None
            if self.keepalive:
                transport.set_keepalive(self.keepalive)
            self._client = client
            logger.debug("connected to %s", self._where())
            return transport

    def connect(self) -> None:
        """Connect, and open the SFTP session, now rather than at the first command or
        upload (ExecutorError if it cannot)."""
        self._sftp_client()

    def _open_channel(self) -> paramiko.Channel:
        # A connection can look alive until the first request fails: retry once.
        for attempt in (1, 2):
            transport = self._transport()
            try:
                return transport.open_session(timeout=self.connect_timeout)
            except _TRANSPORT_ERRORS as exc:
                with self._lock:
                    self._drop()
                if attempt == 2:
                    raise ExecutorError(f"cannot open a channel to {self._where()}: {exc}") from exc
        raise AssertionError("unreachable")

    def _sftp_client(self) -> paramiko.SFTPClient:
        with self._lock:
            transport = self._transport()
            if self._sftp is None or self._sftp.get_channel() is None or \
                    self._sftp.get_channel().closed:  # type: ignore[union-attr]
                try:
                    self._sftp = paramiko.SFTPClient.from_transport(transport)
                except _TRANSPORT_ERRORS as exc:
                    self._drop()
                    raise ExecutorError(f"cannot start SFTP on {self._where()}: {exc}") from exc
            assert self._sftp is not None
            return self._sftp

    def _drop(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._sftp is not None:
            self._sftp.close()
        if self._client is not None:
            self._client.close()
        self._sftp = None
        self._client = None

    def close(self) -> None:
        """Close the connection (a later call reconnects)."""
        with self._lock:
            self._drop()

    # -- commands ---------------------------------------------------------------
    def run(self, argv: Sequence[str], *, timeout: float, on_output: OutputSink | None = None,
            env: Mapping[str, str] | None = None, cwd: str | None = None,
            should_stop: StopCheck | None = None) -> CommandResult:
        """Run `argv` on the node; stream its output to `on_output` as it arrives.

        Raises CommandTimeout (after killing the remote process group) when the
        command outlives `timeout` seconds, CommandAborted (after the same kill)
        when `should_stop` returns True (it is asked about every
        ssh_session.STOP_POLL seconds), ExecutorError when the connection fails.
        """
        if not argv:
            raise ValueError("empty command")
        if should_stop is not None and should_stop():
            # Already stopped: do not start something only to kill it.
            raise CommandAborted(f"command on {self.node_name} aborted before it started")
        command = list(argv)
        if env:
            bad = [k for k in env if not _ENV_NAME.match(k)]
            if bad:
                raise ValueError(f"invalid environment variable names: {bad}")
            command = ["env", *[f"{k}={v}" for k, v in env.items()], *command]
        line = shlex.join(["sh", "-c", WRAPPER, "hyperv-ci", cwd or "", *command])
        channel = self._open_channel()
        try:
            channel.exec_command(line)
            channel.shutdown_write()  # no stdin: a command that reads it sees EOF
        except _TRANSPORT_ERRORS as exc:
            channel.close()
            raise ExecutorError(f"cannot start a command on {self._where()}: {exc}") from exc
        logger.debug("running on %s: %s", self.node_name, shlex.join(argv))
        return CommandSession(channel, timeout, on_output, should_stop, node_name=self.node_name,
                              where=self._where(), kill_group=self._kill_group).wait()

    def _kill_group(self, pgid: int) -> None:
        """Kill a remote process group: TERM, then KILL after the grace period."""
        steps = str(max(int(self.kill_grace * 10), 1))
        line = shlex.join(["sh", "-c", _KILLER, "hyperv-ci-kill", str(pgid), steps])
        try:
            channel = self._open_channel()
            channel.settimeout(self.kill_grace + self.connect_timeout)
            channel.exec_command(line)
            channel.recv_exit_status()
            channel.close()
        except (ExecutorError, *_TRANSPORT_ERRORS) as exc:
            logger.warning("could not kill process group %d on %s: %s", pgid, self.node_name, exc)

    # -- files ------------------------------------------------------------------
    def put(self, data: bytes, remote_path: str, mode: int = 0o644) -> None:
        """Write `data` to `remote_path` (parent directories created), then chmod `mode`."""
        sftp = self._sftp_client()
        try:
            self._makedirs(sftp, str(PurePosixPath(remote_path).parent))
            with sftp.open(remote_path, "wb") as handle:
                handle.set_pipelined(True)
                for start in range(0, len(data), _CHUNK):
                    handle.write(data[start:start + _CHUNK])
            sftp.chmod(remote_path, mode)
        except _TRANSPORT_ERRORS as exc:
            self.close()
            raise ExecutorError(f"upload to {self._where()} failed: {exc}") from exc

    @staticmethod
    def _makedirs(sftp: paramiko.SFTPClient, remote_dir: str) -> None:
        missing: list[str] = []
        path = PurePosixPath(remote_dir)
        while str(path) not in ("", ".", "/"):
            try:
                sftp.stat(str(path))
                break
            except FileNotFoundError:
                missing.append(str(path))
                path = path.parent
        for directory in reversed(missing):
            sftp.mkdir(directory)

    def get(self, remote_path: str, local_path: Path) -> None:
        """Copy one remote file to `local_path` (parent directories created)."""
        sftp = self._sftp_client()
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            sftp.get(remote_path, str(local_path))
        except _TRANSPORT_ERRORS as exc:
            self.close()
            raise ExecutorError(f"download from {self._where()} failed: {exc}") from exc

    def remove(self, remote_paths: Sequence[str]) -> None:
        """Delete remote files over the open SFTP session, as `rm -f` would: one
        that is not there, or cannot be removed, is left (no command started)."""
        sftp = self._sftp_client()
        try:
            for path in remote_paths:
                try:
                    sftp.remove(path)
                except OSError:  # FileNotFoundError, PermissionError: rm -f's exit 1
                    logger.debug("could not remove %s on %s", path, self._where(), exc_info=True)
        except _TRANSPORT_ERRORS as exc:
            self.close()
            raise ExecutorError(f"removing files on {self._where()} failed: {exc}") from exc

    def read_from(self, remote_path: str, offset: int, limit: int) -> bytes | None:
        """Up to `limit` bytes of a remote file from `offset` (b"" when it has no more),
        None when it does not exist yet: how a file still being written is followed."""
        # Its own SFTP channel: the follower reads while the worker's thread may be
        # uploading or downloading on the main one, and one paramiko SFTPClient
        # used from two threads at once can hang waiting for a reply.
        with self._reader_lock:
            try:
                with self._lock:
                    transport = self._transport()
                    if self._reader is None or self._reader.sock.closed:
                        self._reader = paramiko.SFTPClient.from_transport(transport)
                    reader = self._reader
                assert reader is not None
                with reader.open(remote_path, "rb") as remote:
                    remote.seek(offset)
                    return remote.read(limit)
            except FileNotFoundError:
                return None
            except _TRANSPORT_ERRORS as exc:
                self.close()
                raise ExecutorError(f"read from {self._where()} failed: {exc}") from exc

    def get_tree(self, remote_dir: str, local_dir: Path) -> list[Path]:
        """Copy a remote directory tree (files, and files behind symlinks) into `local_dir`.

        Returns the local files written. Names that could escape `local_dir`
        are skipped; symlinked directories are not followed (no loops).
        """
        sftp = self._sftp_client()
        written: list[Path] = []
        pending = [(PurePosixPath(remote_dir), Path(local_dir))]
        try:
            while pending:
                remote, local = pending.pop()
                local.mkdir(parents=True, exist_ok=True)
                for entry in sftp.listdir_attr(str(remote)):
                    name = entry.filename
                    if name in ("", ".", "..") or "/" in name or "\\" in name:
                        logger.warning("skipping unsafe remote name %r in %s", name, remote)
                        continue
                    attrs = entry
                    if entry.st_mode is not None and stat.S_ISLNK(entry.st_mode):
                        try:
                            attrs = sftp.stat(str(remote / name))
                        except FileNotFoundError:
                            continue  # dangling link
                    mode = attrs.st_mode or 0
                    if stat.S_ISDIR(mode) and attrs is entry:
                        pending.append((remote / name, local / name))
                    elif stat.S_ISREG(mode):
                        sftp.get(str(remote / name), str(local / name))
                        written.append(local / name)
        except _TRANSPORT_ERRORS as exc:
            self.close()
            raise ExecutorError(f"copying {remote_dir} from {self._where()} failed: {exc}") from exc
        return written
