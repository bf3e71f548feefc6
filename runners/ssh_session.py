"""One command running over an SSH channel (runners/ssh.py starts it).

The command runs inside WRAPPER, a small fixed `sh` script that prints the
remote process group first (one line on stdout, stripped here) and then
execs the argument list: a timeout, or the caller's `should_stop` turning
true, kills that whole group over a second channel. Output is decoded as
UTF-8 (bad bytes replaced) and streamed to the caller's sink as it arrives.
"""

from __future__ import annotations

import codecs
import logging
import select
import time
from collections.abc import Callable

import paramiko

from runners.base import (
    CommandAborted,
    CommandResult,
    CommandStopped,
    CommandTimeout,
    ExecutorError,
    OutputSink,
    StopCheck,
)

logger = logging.getLogger(__name__)

_PGID_TAG = "hyperv-ci-pgid"
# $1 is the working directory ("" for the login directory), the rest the argv.
# sshd makes each session its own process group, so the group read from
# /proc is what a timeout kills.
WRAPPER = (
    'pgid=$$; read -r _ _ _ _ pgid _ < /proc/$$/stat 2>/dev/null || pgid=$$; '
    f'printf "{_PGID_TAG} %s\\n" "$pgid"; '
    'if [ -n "$1" ]; then cd -- "$1" || exit 125; fi; shift; exec "$@"'
)
_CHUNK = 32768
STOP_POLL = 0.5  # seconds between two calls of a running command's `should_stop`
EOF_GRACE = 2.0  # seconds a finished command's output may trail its exit status
# How long a stop waits for the wrapper's pgid line if it has not arrived yet
# (a command stopped right after it started): without it nothing can be killed.
_PGID_WAIT = 5.0


class CommandSession:
    """One running remote command: pumps output, enforces the timeout and `should_stop`."""

    def __init__(self, channel: paramiko.Channel, timeout: float,
                 on_output: OutputSink | None, should_stop: StopCheck | None = None, *,
                 node_name: str, where: str, kill_group: Callable[[int], None]) -> None:
        self.node_name = node_name
        self.where = where  # the node and its address, for errors
        self.kill_group = kill_group  # kills a remote process group (over another channel)
        self.channel = channel
        self.timeout = timeout
        self.on_output = on_output
        self.should_stop = should_stop
        self.out: list[str] = []
        self.err: list[str] = []
        self._out_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._err_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._head = b""  # stdout until the wrapper's pgid line is complete
        self._held_err = b""  # stderr held back until then
        self._head_done = False
        self.pgid: int | None = None

    def _emit(self, text: str, sink: list[str]) -> None:
        if text:
            sink.append(text)
            if self.on_output is not None:
                self.on_output(text)

    # The wrapper prints the pgid line on stdout before it execs the command, so
    # it is the first thing on stdout; stderr is held until it is read, so the
    # sink never sees output of a command that could not be killed.
    def _stdout(self, data: bytes, final: bool = False) -> None:
        if not self._head_done:
            self._head += data
            first, sep, rest = self._head.partition(b"\n")
            if not sep and not final:
                return
            tag, _, value = first.decode("ascii", errors="replace").partition(" ")
            if sep and tag == _PGID_TAG and value.strip().isdigit():
                self.pgid = int(value)
                data = rest
            else:  # not our wrapper's line (a broken login shell?): keep it all
                data = self._head
            self._head_done = True
            self._head = b""
            self._stderr(b"")
        self._emit(self._out_decoder.decode(data, final=final), self.out)

    def _stderr(self, data: bytes, final: bool = False) -> None:
        if not self._head_done and not final:
            self._held_err += data
            return
        data, self._held_err = self._held_err + data, b""
        self._emit(self._err_decoder.decode(data, final=final), self.err)

    def _pump(self) -> bool:
        """Read whatever is buffered; True if anything was read."""
        got = False
        while self.channel.recv_ready():
            self._stdout(self.channel.recv(_CHUNK))
            got = True
        while self.channel.recv_stderr_ready():
            self._stderr(self.channel.recv_stderr(_CHUNK))
            got = True
        return got

    def wait(self) -> CommandResult:
        deadline = time.monotonic() + self.timeout
        next_check = time.monotonic()
        channel = self.channel
        drained_by: float | None = None
        try:
            while True:
                got = self._pump()
                # sshd sends the exit status when the command ends, which can be before
                # the last of its output (session_exit_message() in OpenSSH's session.c
                # runs when the child is reaped; its pipes are drained after): the
                # output is complete at the channel's EOF. A command whose background
                # child keeps the pipes open sends no EOF: that is given EOF_GRACE.
                if channel.exit_status_ready() and not (
                        channel.recv_ready() or channel.recv_stderr_ready()):
                    if channel.eof_received or channel.closed:
                        break
                    if drained_by is None:
                        drained_by = time.monotonic() + EOF_GRACE
                    elif time.monotonic() >= drained_by:
                        logger.debug("a command on %s ended leaving a process that holds "
                                     "its output open", self.node_name)
                        break
                now = time.monotonic()
                left = deadline - now
                if left <= 0:
                    raise self._timed_out()
                # Rate-limited: a command with a steady stream of output must not
                # call the check once per packet.
                if self.should_stop is not None and now >= next_check:
                    if self.should_stop():
                        raise self._aborted()
                    next_check = now + STOP_POLL
                if not got:
                    select.select([channel], [], [], min(left, STOP_POLL))
            self._stdout(b"", final=True)
            self._stderr(b"", final=True)
            status = channel.recv_exit_status()
            transport = channel.get_transport()
            if status == -1 and (transport is None or not transport.is_active()):
                raise ExecutorError(f"connection to {self.where} lost while running")
            return CommandResult(status, "".join(self.out), "".join(self.err))
        except BaseException as exc:
            # A timeout or abort has killed the group already; a lost link cannot.
            if not isinstance(exc, ExecutorError | CommandStopped) and self.pgid is not None \
                    and not channel.exit_status_ready():
                self.kill_group(self.pgid)  # e.g. on_output raised: stop the remote
            raise
        finally:
            channel.close()

    def _stop(self) -> None:
        """Kill the remote process group, as soon as the wrapper has said which it is."""
        limit = time.monotonic() + _PGID_WAIT
        while not self._head_done and not self.channel.exit_status_ready() \
                and time.monotonic() < limit:
            if not self._pump():
                select.select([self.channel], [], [], 0.1)
        if self.pgid is not None:
            self.kill_group(self.pgid)

    def _aborted(self) -> CommandAborted:
        self._stop()
        logger.info("command on %s aborted by its caller (process group %s killed)",
                    self.node_name, self.pgid)
        return CommandAborted(f"command on {self.node_name} aborted")

    def _timed_out(self) -> CommandTimeout:
        self._stop()
        logger.warning("command on %s timed out after %ss (process group %s killed)",
                       self.node_name, self.timeout, self.pgid)
        return CommandTimeout(
            f"command on {self.node_name} timed out after {self.timeout:g}s")
