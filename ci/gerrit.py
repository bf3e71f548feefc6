"""Our Gerrit client: `gerrit query|review|version|stream-events` over paramiko.

The server's host key must be in the configured known_hosts file
(`RejectPolicy`); only the configured key is offered (no agent, no ~/.ssh).
A server we cannot trust, or that refuses our key, is `GerritRefused`: an
operator must act, so callers say it loudly rather than retry quietly.
The event stream sends keepalives that wait for their reply (`LinkProbe`):
a link that silently stopped carrying packets ends within
`keepalive + keepalive_timeout` seconds.
Gerrit re-parses the command line, so every command is an argument list
joined with `shlex.join`: a review message is data, whatever it holds.
Every failure surfaces as `GerritError` (ci/gerrit_errors.py), with the exit
status and stderr; a review Gerrit refuses for its votes is the `LabelRefused`
kind of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import paramiko

from ci.config import GerritConfig
from ci.gerrit_errors import (
    GerritError,
    GerritRefused,
    GerritRejected,
    LabelRefused,
    label_refusal,
    truncate_message,
)
from ci.preflight import known_hosts_name
from ci.quickack import open_connection

logger = logging.getLogger(__name__)

_READ_SIZE = 1 << 20
_SPECIAL_FILES = ("/COMMIT_MSG", "/MERGE_LIST", "/PATCHSET_LEVEL")
# Changes per batched files lookup: far inside Gerrit's default index.maxTerms
# (1024 leaf terms, java/com/google/gerrit/index/IndexConfig.java) and one page
# of its default query limit (500 rows; `query` pages past it anyway).
FILES_BATCH = 100


def _label_arg(name: str, value: int) -> str:
    return f"{name}={value:+d}" if value else f"{name}=0"


class GerritClient:
    """One Gerrit server. Commands share a cached connection; each stream has its own."""

    def __init__(self, config: GerritConfig, *, timeout: float = 30.0) -> None:
        self.config = config
        self.timeout = timeout
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    # -- connections --------------------------------------------------------------------------

    def connect(self, *, quick_ack: bool = False) -> paramiko.SSHClient:
        """A new authenticated SSH connection (the host key checked against known_hosts);
        `quick_ack` for one that commands' answers come back on (ci/quickack.py).

        Raises GerritRefused when known_hosts or the key cannot be used or the
        server refuses them, GerritError when it cannot be reached.
        """
        cfg = self.config
        where = f"{cfg.host}:{cfg.port}"
        client = paramiko.SSHClient()
        try:
            _trust(client, cfg)
            sock = (open_connection(cfg.host, cfg.port, self.timeout) if quick_ack
                    else None)
            client.connect(cfg.host, port=cfg.port, username=cfg.username,
                           key_filename=str(cfg.key_file), allow_agent=False,
                           look_for_keys=False, timeout=self.timeout,
                           banner_timeout=self.timeout, auth_timeout=self.timeout, sock=sock)
        except GerritRefused:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise GerritRefused(
                f"{where} presented a host key that does not match gerrit.known_hosts "
                f"({cfg.known_hosts}): it offered {exc.key.get_name()} {exc.key.fingerprint}"
                "; if the server's key really changed, update known_hosts") from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            raise GerritRefused(f"{where} refused gerrit.key_file ({cfg.key_file}) for user "
                                f"{cfg.username}: {exc}") from exc
        except FileNotFoundError as exc:
            client.close()
            raise GerritRefused(f"gerrit.key_file: {cfg.key_file}: no such file") from exc
        except (paramiko.SSHException, OSError) as exc:
            client.close()
            raise GerritError(f"cannot connect to {where}: "
                              f"{type(exc).__name__}: {exc}") from exc
        transport = client.get_transport()
        if transport is not None and isinstance(transport.sock, socket.socket):
            # A command's requests are small packets, each awaiting Gerrit's answer:
            # Nagle's algorithm would hold one back for the peer's delayed ACK
            # (about 40 ms a query on Linux, measured by bench/latency.py).
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if transport is not None and cfg.keepalive:
            transport.set_keepalive(cfg.keepalive)
        return client

    def _transport(self) -> paramiko.Transport:
        with self._lock:
            transport = self._client.get_transport() if self._client else None
            if transport is None or not transport.is_active():
                if self._client is not None:
                    self._client.close()
                self._client = self.connect(quick_ack=True)
                transport = self._client.get_transport()
            assert transport is not None
            return transport

    def close(self) -> None:
        """Drop the cached connection."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None) -> str:
        """Run one command (argv, quoted for Gerrit's parser) and return its stdout.

        Raises GerritError on a non-zero exit status, with stderr.
        """
        command = shlex.join(argv)
        try:
            channel = self._transport().open_session(timeout=self.timeout)
            channel.settimeout(self.timeout)
            channel.exec_command(command)
            if stdin is not None:
                channel.sendall(stdin)
                channel.shutdown_write()
            out = channel.makefile("rb").read()
            err = channel.makefile_stderr("rb").read()
            status = channel.recv_exit_status()
            channel.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise GerritError(
                f"{shlex.join(argv[:2])} failed: {type(exc).__name__}: {exc}") from exc
        if status != 0:
            raise GerritError(f"{shlex.join(argv[:2])} failed", exit_status=status,
                              stderr=err.decode("utf-8", "replace"))
        return out.decode("utf-8")

    # -- commands -------------------------------------------------------------------------------

    def version(self) -> str:
        """The server's version, e.g. "3.9.1"."""
        out = self.run(["gerrit", "version"]).strip()
        return out.removeprefix("gerrit version ").strip()

    def query(self, query: str, *, current_patch_set: bool = False, patch_sets: bool = False,
              files: bool = False, comments: bool = False) -> list[dict[str, Any]]:
        """Every change matching `query`, following paging; stats rows dropped."""
        argv = ["gerrit", "query", "--format=JSON"]
        for flag, on in (("--current-patch-set", current_patch_set),
                         ("--patch-sets", patch_sets), ("--files", files),
                         ("--comments", comments)):
            if on:
                argv.append(flag)
        changes: list[dict[str, Any]] = []
        page_args: list[str] = []
        page_query = query
        while True:
            rows, stats = self._query_page([*argv, *page_args, page_query])
            changes.extend(rows)
            if stats.get("moreChanges"):
                page_args = ["--start", str(len(changes))]
            elif "moreChanges" not in stats and rows and "sortKey" in rows[-1]:
                # Gerrit < 2.9: resume after the last row's sortKey until a page is empty.
                page_query = f"{query} resume_sortkey:{rows[-1]['sortKey']}"
            else:
                return changes

    def _query_page(self, argv: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        stats: dict[str, Any] = {}
        for line in self.run(argv).splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            kind = row.get("type")
            if kind == "error":
                raise GerritRejected(f"query failed: {row.get('message', '')}")
            if kind == "stats":
                stats = row
            else:
                rows.append(row)
        return rows, stats

    def changed_files(self, change: int, patchset: int) -> list[str]:
        """The files a patch set touches (Gerrit's magic files left out)."""
        rows = self.query(f"change:{int(change)}", patch_sets=True, files=True)
        for row in rows:
            for ps in row.get("patchSets", []):
                if str(ps.get("number")) == str(patchset):
                    return [f["file"] for f in ps.get("files", [])
                            if f.get("file") not in _SPECIAL_FILES]
        raise GerritRejected(f"change {change} has no patch set {patchset}")

    def files_of(self, patchsets: Iterable[tuple[int, int]]) -> dict[tuple[int, int], list[str]]:
        """The changed files of many patch sets (magic files left out), asked with one
        `gerrit query change:A OR change:B ...` per FILES_BATCH changes rather than
        one query each; a patch set Gerrit does not list is absent from the answer."""
        wanted = {(int(change), int(ps)) for change, ps in patchsets}
        numbers = sorted({change for change, _ in wanted})
        found: dict[tuple[int, int], list[str]] = {}
        for at in range(0, len(numbers), FILES_BATCH):
            terms = " OR ".join(f"change:{number}" for number in numbers[at:at + FILES_BATCH])
            for row in self.query(terms, patch_sets=True, files=True):
                for ps in row.get("patchSets", []):
                    key = (int(row["number"]), int(ps["number"]))
                    if key in wanted:
                        found[key] = [f["file"] for f in ps.get("files", [])
                                      if f.get("file") not in _SPECIAL_FILES]
        return found

    def review(self, project: str, change: int, patchset: int, *, message: str,
               labels: dict[str, int] | None = None, tag: str | None = None) -> None:
        """Post a comment and votes on CHANGE,PATCHSET.

        Raises LabelRefused when Gerrit refuses a vote (nothing was posted).
        """
        argv = ["gerrit", "review", "--project", project,
                "--message", truncate_message(message)]
        for name, value in (labels or {}).items():
            argv += ["--label", _label_arg(name, value)]
        if tag:
            argv += ["--tag", tag]
        argv.append(f"{int(change)},{int(patchset)}")
        try:
            self.run(argv)
        except GerritError as exc:
            refusal = label_refusal(exc.stderr) if labels and exc.exit_status else None
            if refusal is None:
                raise
            raise LabelRefused(*refusal, exit_status=exc.exit_status,
                               stderr=exc.stderr) from exc
        logger.info("review posted on %s,%s (%s)", change, patchset, labels)

    # -- events ---------------------------------------------------------------------------------

    def stream_events(self, stop: threading.Event, *, poll_timeout: float = 1.0,
                      tick: float = 0.2) -> Iterator[bytes | None]:
        """Yield raw event lines from `gerrit stream-events` as they come.

        Yields None when the stream has been quiet for `poll_timeout` seconds,
        otherwise as `stream_chunks`, one line at a time.
        """
        for chunk in self.stream_chunks(stop, poll_timeout=poll_timeout, tick=tick):
            if chunk is None:
                yield None
            else:
                yield from chunk

    def stream_chunks(self, stop: threading.Event, *, poll_timeout: float = 1.0,
                      tick: float = 0.2) -> Iterator[list[bytes] | None]:
        """Yield the complete event lines of each read of `gerrit stream-events`.

        One list per read of the channel (as much as had arrived, up to 1 MiB),
        so a reader hands a burst over in a few large pieces, not line by line.
        Yields None when the stream has been quiet for `poll_timeout` seconds
        (so the caller can flush a batch) and again every `poll_timeout` while
        it stays quiet. Returns when `stop` is set (checked every `tick`).
        Raises GerritError when the connection drops or the command ends, or
        when nothing arrived for `config.silence_timeout` seconds (if set):
        the caller reconnects and catches up by query.
        """
        client = self.connect()
        try:
            transport = client.get_transport()
            assert transport is not None
            probe = None
            if self.config.keepalive:
                # paramiko's keepalive never awaits a reply: this probe replaces it here.
                transport.set_keepalive(0)
                probe = LinkProbe(transport, self.config.keepalive,
                                  self.config.keepalive_timeout)
            # paramiko's (and OpenSSH's) 2 MB window: a 16 MB one let the server
            # flood paramiko's transport thread, which then took the interpreter
            # lock from the reader (intake 7,706 -> 10,906 events/s back at 2 MB,
            # bench/listener_throughput.py corpus, a loaded machine).
            channel = transport.open_session(timeout=self.timeout)
            channel.exec_command(shlex.join(["gerrit", "stream-events"]))
            channel.settimeout(tick)
            yield from self._read_chunks(channel, stop, poll_timeout, probe)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise GerritError(f"event stream lost: {type(exc).__name__}: {exc}") from exc
        finally:
            client.close()

    def _read_chunks(self, channel: paramiko.Channel, stop: threading.Event,
                     poll_timeout: float, probe: LinkProbe | None
                     ) -> Iterator[list[bytes] | None]:
        silence = self.config.silence_timeout
        partial = b""
        last_data = last_yield = time.monotonic()
        while not stop.is_set():
            if probe is not None:
                probe.check(time.monotonic())
            try:
                data = channel.recv(_READ_SIZE)
            except TimeoutError:
                now = time.monotonic()
                if silence and now - last_data > silence:
                    raise GerritError(f"no event for {silence} s; reconnecting") from None
                if now - last_yield >= poll_timeout:
                    last_yield = now
                    yield None
                continue
            if not data:
                # The exit status travels just before the close; a dropped link has none.
                status = channel.recv_exit_status() if channel.status_event.wait(0.5) else None
                err = b""
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                raise GerritError("event stream ended", exit_status=status,
                                  stderr=err.decode("utf-8", "replace"))
            last_data = last_yield = time.monotonic()
            lines = (partial + data).split(b"\n") if partial else data.split(b"\n")
            partial = lines.pop()
            chunk = [line for line in lines if line and not line.isspace()]
            if chunk:
                yield chunk
        # Ask Gerrit to end the command, as Zuul does, then close.
        with contextlib.suppress(OSError, EOFError):
            channel.sendall(b"\x03")


def _trust(client: paramiko.SSHClient, cfg: GerritConfig) -> None:
    """Load known_hosts into `client`, refusing a file that cannot know this server."""
    try:
        client.load_host_keys(str(cfg.known_hosts))
    except (OSError, paramiko.SSHException) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise GerritRefused(f"gerrit.known_hosts: {cfg.known_hosts}: {reason}") from exc
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    name = known_hosts_name(cfg.host, cfg.port)
    if client.get_host_keys().lookup(name) is None:
        raise GerritRefused(f"gerrit.known_hosts: {cfg.known_hosts} has no key for {name} "
                            f"(ssh-keyscan -p {cfg.port} {cfg.host} prints it; check it "
                            "against the server's published fingerprint)")


class LinkProbe:
    """A keepalive that waits for its reply, so a frozen link is noticed.

    TCP may not notice for hours that a link stopped carrying packets (a NAT
    or firewall that forgot the connection, a host that vanished), and
    paramiko's keepalive sends its request without want-reply, so nothing
    would ever tell. Every `interval` seconds this sends
    `keepalive@openssh.com` with want-reply set, as OpenSSH's
    ServerAliveInterval does, from a thread of its own (paramiko's
    `global_request` has no timeout); `check` raises GerritError once a reply
    is `timeout` seconds late. Any reply proves the link: Gerrit's SSH server
    (Apache MINA sshd, `KeepAliveHandler`) answers SSH_MSG_REQUEST_FAILURE to
    `keepalive@*`, as RFC 4254 section 4 has a server answer any request it
    does not support.
    """

    REQUEST = "keepalive@openssh.com"

    def __init__(self, transport: paramiko.Transport, interval: float, timeout: float, *,
                 now: float | None = None) -> None:
        self.transport = transport
        self.interval = interval
        self.timeout = timeout
        self.sent = 0
        self.answered = 0
        self._reply = threading.Event()
        self._sent_at: float | None = None
        self._next = (time.monotonic() if now is None else now) + interval

    def check(self, now: float) -> None:
        """Send the next request when due; raise GerritError if the last one is overdue."""
        if self._sent_at is not None:
            if self._reply.is_set():
                self.answered += 1
                self._sent_at, self._next = None, now + self.interval
            elif now - self._sent_at > self.timeout:
                raise GerritError(f"no reply to an SSH keepalive within {self.timeout} s: "
                                  "the link is dead; reconnecting")
            return
        if now >= self._next:
            self._reply.clear()
            self._sent_at = now
            self.sent += 1
            threading.Thread(target=self._ask, name="gerrit-keepalive", daemon=True).start()

    def _ask(self) -> None:
        # Returns on the reply (None for REQUEST_FAILURE: alive all the same), or
        # once the transport is closed (the reader notices that on its own).
        with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
            self.transport.global_request(self.REQUEST, wait=True)
        self._reply.set()
