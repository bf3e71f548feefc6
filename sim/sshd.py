"""OpenSSH's real sshd on loopback, for the tests and the demo's devstack node.

Everything lives under one work directory: host key, client key,
authorized_keys, known_hosts, sshd_config and sshd's own log (`sshd.log`).
Commands run as the current user (root in CI containers: sshd then needs
/run/sshd, which `start` creates).
"""

from __future__ import annotations

import getpass
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from ci.config import NodeConfig, SSHAccess

logger = logging.getLogger(__name__)

SSHD = Path("/usr/sbin/sshd")  # sshd refuses to re-exec unless run by absolute path
HOST = "127.0.0.1"
START_TIMEOUT = 10.0
# sshd as a machine of its own (unshare(1), root only): its own host name $1
# (UTS namespace), $2 bind-mounted over $3 unless empty (mount namespace; private
# propagation keeps the mount out of the host's), and its own PID namespace with
# /proc remounted, whose every process dies with sshd (--kill-child: the
# kernel kills a PID namespace's processes when its init, sshd, dies), as a
# VM's processes die when it is turned off.
MACHINE_WRAPPER = (
    "unshare", "--mount", "--uts", "--pid", "--mount-proc", "--kill-child",
    "--propagation", "private", "sh", "-c",
    'if [ -n "$1" ]; then hostname "$1" || exit 1; fi; '
    'if [ -n "$2" ]; then mount --bind "$2" "$3" || exit 1; fi; shift 3; exec "$@"', "sh")


def available() -> bool:
    """Whether OpenSSH's sshd (and ssh-keygen) can be started here."""
    return SSHD.is_file() and os.access(SSHD, os.X_OK) and _keygen() is not None


def _keygen() -> str | None:
    for candidate in ("/usr/bin/ssh-keygen", "/bin/ssh-keygen"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    """A port that was free a moment ago (bind port 0, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def node_config(name: str, port: int, username: str, key_file: Path,
                known_hosts: Path) -> NodeConfig:
    """A devstack `NodeConfig` reaching a loopback SSH server."""
    return NodeConfig(
        name=name, label="devstack", address=HOST,
        ssh=SSHAccess(port=port, username=username, key_file=key_file, known_hosts=known_hosts),
    )


class OpenSSHServer:
    """One sshd process listening on 127.0.0.1 with a fresh set of keys."""

    def __init__(self, workdir: Path, *, bind: tuple[Path, Path] | None = None,
                 hostname: str | None = None, home: Path | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        # (tree, seen_at): in every session of this sshd, `tree` appears at
        # `seen_at` (a private mount namespace; needs root). Two simulated
        # controllers on one machine each see their own tree at the job's paths.
        self.bind = bind
        # The machine's host name, and the sessions' $HOME (a simulated VM's own).
        self.hostname = hostname
        self.home = home
        self.host = HOST
        self.port = 0
        self.username = getpass.getuser()
        self.host_key_file = self.workdir / "host_ed25519"
        self.client_key_file = self.workdir / "client_ed25519"
        self.authorized_keys_file = self.workdir / "authorized_keys"
        self.known_hosts_file = self.workdir / "known_hosts"
        self.config_file = self.workdir / "sshd_config"
        self.log_file = self.workdir / "sshd.log"
        # A directory put first on every session's PATH (sshd_config SetEnv, OpenSSH 7.8+):
        # the simulated controller's system tools (sim/lab_probe.py).
        self.path_prefix: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- set-up -----------------------------------------------------------------
    def _generate_keys(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        keygen = _keygen()
        if keygen is None:
            raise RuntimeError("ssh-keygen is not installed")
        for key in (self.host_key_file, self.client_key_file):
            if not key.exists():
                subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", key.name,
                                "-f", str(key)], check=True, capture_output=True)
            key.chmod(0o600)  # sshd ignores a host key others can read
        pub = self.client_key_file.with_name(self.client_key_file.name + ".pub")
        self.authorized_keys_file.write_text(pub.read_text(encoding="ascii"), encoding="ascii")

    def _write_config(self) -> None:
        lines = [
            f"ListenAddress {HOST}",
            f"HostKey {self.host_key_file}",
            "PidFile none",
            f"AuthorizedKeysFile {self.authorized_keys_file}",
            "UsePAM no",
            "StrictModes no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "Subsystem sftp internal-sftp",
            "LogLevel VERBOSE",
        ]
        env = []
        if self.path_prefix is not None:
            env.append(f"PATH={self.path_prefix}:/usr/local/bin:/usr/bin:/bin")
        if self.home is not None:
            env.append(f"HOME={self.home}")
        if env:
            lines.append("SetEnv " + " ".join(env))
        self.config_file.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _write_known_hosts(self) -> None:
        pub = self.host_key_file.with_name(self.host_key_file.name + ".pub")
        keytype, blob = pub.read_text(encoding="ascii").split()[:2]
        self.known_hosts_file.write_text(f"[{HOST}]:{self.port} {keytype} {blob}\n",
                                         encoding="ascii")

    # -- life cycle ---------------------------------------------------------------
    def start(self) -> OpenSSHServer:
        """Generate keys, start sshd on a free port and wait until it listens."""
        if not available():
            raise RuntimeError(f"{SSHD} is not installed (Debian package openssh-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        self._generate_keys()
        self._write_config()
        last_error = ""
        for _attempt in range(3):  # another process may grab the port between probe and bind
            self.port = free_port()
            if self._launch():
                self._write_known_hosts()
                logger.info("sshd listening on %s:%d (workdir %s)", HOST, self.port, self.workdir)
                return self
            last_error = self.log_file.read_text(encoding="utf-8", errors="replace")
        raise RuntimeError(f"sshd did not start: {last_error.strip()}")

    def _launch(self) -> bool:
        argv = [str(SSHD), "-D", "-e", "-f", str(self.config_file), "-p", str(self.port)]
        if self.bind is not None or self.hostname is not None:
            tree, seen_at = self.bind or ("", "")
            argv = [*MACHINE_WRAPPER, self.hostname or "", str(tree), str(seen_at), *argv]
        with self.log_file.open("wb") as log:
            # stderr goes to a file so sshd never blocks on a full pipe.
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
            if "Server listening on" in text:
                return True
            if self._proc.poll() is not None:
                self._proc = None
                return False
            time.sleep(0.005)
        self.stop()
        return False

    def kill(self) -> None:
        """SIGKILL, as pulling a machine's power: with `hostname` set, every process
        of its PID namespace dies with it (unshare's --kill-child)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def relaunch(self) -> None:
        """Start again on the same port with the same keys (a VM turned back on)."""
        if self.running:
            return
        if not self._launch():
            raise RuntimeError("sshd did not start again: " + self.log_file.read_text(
                encoding="utf-8", errors="replace").strip())

    def stop(self) -> None:
        """Stop sshd (SIGTERM, then SIGKILL); idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def node_config(self, name: str = "devstack") -> NodeConfig:
        """A `NodeConfig` for this server, as the CI's YAML would give it."""
        return node_config(name, self.port, self.username, self.client_key_file,
                           self.known_hosts_file)

    def __enter__(self) -> OpenSSHServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
