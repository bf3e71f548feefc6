"""What the listener benchmarks share: a corpus of Gerrit 3.x events and a
simulated Gerrit in a process of its own.

The simulated Gerrit runs in its own process so that its SSH server's work
(encrypting, framing) never competes with the reader under test for one
interpreter lock: on the real system Gerrit is another machine. Readers run
in their own processes too (`run_reader`), and every time is taken on
CLOCK_MONOTONIC, which all processes of the host share.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sim.gerrit_state import wire_json

if TYPE_CHECKING:
    from ci.config import Config

_CTX = multiprocessing.get_context("spawn")
_NAMES = ["Zoë Ñúñez 李", "Łukasz Żółć", "Ørjan Æsir", "Jürgen Müller", "Σοφία Παπαδάκη"]
_FILLER = "Hyper-V: détails du correctif 修复实例名 — naïve café. "


def corpus(count: int, seed: int = 14) -> list[bytes]:
    """`count` Gerrit-3.x-shaped stream-events lines of 1.5–3 KB, non-ASCII text.

    Mostly uploads and comments (what a CI hears most), some reviewers added
    and merges; every line distinct, so de-duplication keeps all of them.
    """
    rng = random.Random(seed)
    # Timestamps of the last few minutes (200 events a second): plausible to the
    # listener's clock check.
    base = int(time.time()) - count // 200
    lines = []
    for i in range(count):
        number = 700000 + i
        name = _NAMES[i % len(_NAMES)]
        who = {"name": name, "email": f"dev{i % 97}@example.org", "username": f"dev{i % 97}"}
        created = base + i // 200
        change = {"project": "openstack/nova", "branch": "master", "id": f"I{i:040x}",
                  "number": number, "subject": f"Hyper-V: 修复 {i} — café",
                  "owner": who, "url": f"https://review.example.org/c/openstack/nova/+/{number}",
                  "commitMessage": "", "createdOn": created, "status": "NEW"}
        patchset = {"number": 1 + i % 5, "revision": f"{i:040x}", "parents": [f"{i + 1:040x}"],
                    "ref": f"refs/changes/{number % 100:02d}/{number}/{1 + i % 5}",
                    "uploader": who, "createdOn": created, "author": who, "kind": "REWORK",
                    "sizeInsertions": 12, "sizeDeletions": -3}
        common = {"change": change, "patchSet": patchset, "project": "openstack/nova",
                  "refName": "refs/heads/master", "changeKey": {"id": change["id"]},
                  "eventCreatedOn": created}
        roll = rng.random()
        event: dict[str, Any]
        if roll < 0.6:
            event = {"uploader": who, **common, "type": "patchset-created"}
        elif roll < 0.85:
            event = {"author": who, "approvals": [
                {"type": "Verified", "description": "Verified", "value": "0"},
                {"type": "Code-Review", "description": "Code-Review", "value": "1",
                 "oldValue": "0"}], "comment": f"Patch Set 1: Code-Review+1\n\nlgtm {i} 👍",
                **common, "type": "comment-added"}
        elif roll < 0.95:
            event = {"reviewer": who, "adder": who, **common, "type": "reviewer-added"}
        else:
            event = {"submitter": who, "newRev": f"{i + 2:040x}", **common,
                     "type": "change-merged"}
        target = rng.randint(1500, 3000)
        size = len(wire_json(event).encode())
        if "change" in event and size < target:
            # The commit message carries the bulk, as on a real review server.
            pad = _FILLER * (1 + (target - size) // len(_FILLER.encode()))
            event["change"]["commitMessage"] = (pad.encode()[:target - size]
                                                .decode("utf-8", "ignore"))
        lines.append(wire_json(event).encode())
    return lines


# -- the simulated Gerrit in a process of its own ---------------------------------------------


def _serve(conn: Connection, root: str, users: dict[str, str], queue_size: int) -> None:
    import logging

    from sim.gerrit import SimGerrit

    logging.basicConfig(level=logging.ERROR)
    sim = SimGerrit(Path(root), users=users, stream_queue_size=queue_size).start()
    conn.send((sim.port, str(sim.known_hosts_file)))
    lines: list[bytes] = []
    try:
        while True:
            try:
                command, arg = conn.recv()
            except EOFError:  # the benchmark ended (or was stopped) without saying so
                break
            if command == "load":
                lines = Path(arg).read_bytes().splitlines()
                conn.send(len(lines))
            elif command == "emit":
                # Only once exactly `arg` streams listen (an earlier reader's stream
                # may still be closing): each line must reach exactly one reader.
                count, tail = arg
                deadline = time.monotonic() + 30
                while sim.state.subscriber_count() != count and time.monotonic() < deadline:
                    time.sleep(0.005)
                conn.send(time.monotonic())
                for line in lines:
                    sim.emit_raw(line)
                # gerritlib polls the channel, then reads a line from paramiko's
                # buffered file: the last lines of a burst wait in that buffer
                # until more data comes. A trickle after the corpus (until the
                # next command) lets it finish, as a live server's traffic would.
                sequence = 0
                while tail and not conn.poll(0.02):
                    sequence += 1
                    sim.emit_raw(wire_json({"type": "bench-tail", "n": sequence}).encode())
            elif command == "push":
                result = sim.state.push(**arg)
                conn.send((time.time(), result))
            elif command == "subscribers":
                conn.send(sim.state.subscriber_count())
            elif command == "stop":
                break
    finally:
        sim.stop()
        conn.close()


class SimProcess:
    """A SimGerrit in a child process, driven over a pipe."""

    def __init__(self, root: Path, users: dict[str, str], *, queue_size: int = 1024) -> None:
        self._conn, child = _CTX.Pipe()
        self._proc = _CTX.Process(target=_serve, args=(child, str(root), users, queue_size),
                                  daemon=True)
        self._proc.start()
        # Only the child keeps its end: a child that dies is EOFError here, not a hang.
        child.close()
        self.port, known_hosts = self._conn.recv()
        self.known_hosts = Path(known_hosts)

    def _ask(self, command: str, arg: Any = None) -> Any:
        self._conn.send((command, arg))
        return self._conn.recv()

    def load(self, path: Path) -> int:
        """Read the corpus file (one line an event) into the server's memory."""
        return int(self._ask("load", str(path)))

    def emit(self, subscribers: int = 1, *, tail: bool = False) -> float:
        """Start sending the loaded corpus once `subscribers` streams listen (then,
        with `tail`, a trickle of small lines until the next command); returns the
        monotonic time it started."""
        return float(self._ask("emit", (subscribers, tail)))

    def push(self, **kw: Any) -> tuple[float, dict[str, Any]]:
        """`GerritState.push`; returns (wall time right after its event went out, result)."""
        when, result = self._ask("push", kw)
        return float(when), result

    def subscribers(self) -> int:
        return int(self._ask("subscribers"))

    def wait_subscribers(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.subscribers() != count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.subscribers()} streams listen, not {count}")
            time.sleep(0.01)

    def stop(self) -> None:
        with contextlib.suppress(EOFError, OSError):
            self._ask("stop")
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()


# -- readers in processes of their own --------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a reader connects, and with what."""

    port: int
    known_hosts: str
    key_file: str
    username: str = "hyperv-ci"


def bench_config(target: Target, url: str) -> Config:
    """A configuration watching nova's Hyper-V driver (a files filter, as on the real
    CI: deciding an upload needs its files) through the simulated Gerrit."""
    from ci.config import parse_config

    return parse_config({
        "database": {"url": url},
        "gerrit": {"host": "127.0.0.1", "port": target.port, "username": target.username,
                   "key_file": target.key_file, "known_hosts": target.known_hosts,
                   "keepalive": 0},
        "projects": [{"name": "openstack/nova", "files": ["^nova/virt/hyperv/"],
                      "jobs": ["hyperv"]}],
        "jobs": {"hyperv": {"type": "local", "command": ["true"]}},
    })


def _reader_main(conn: Connection, reader: Callable[..., float], target: Target, count: int,
                 extra: dict[str, Any]) -> None:
    try:
        conn.send(("done", reader(target, count, lambda: conn.send(("ready", None)), **extra)))
    except Exception as exc:  # reported to the parent, which prints it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_reader(reader: Callable[..., float], sim: SimProcess, target: Target, count: int,
               *, tail: bool = False, **extra: Any) -> float:
    """Events per second of `reader` (a module-level function, run in a child process)
    receiving the loaded corpus of `count` lines from `sim`."""
    conn, child = _CTX.Pipe()
    proc = _CTX.Process(target=_reader_main, args=(child, reader, target, count, extra),
                        daemon=True)
    proc.start()
    child.close()  # a reader that dies is EOFError below, not a wait for ever
    try:
        kind, value = conn.recv()
        if kind != "ready":
            raise RuntimeError(f"{reader.__name__}: {value}")
        started = sim.emit(1, tail=tail)
        kind, value = conn.recv()
        if kind != "done":
            raise RuntimeError(f"{reader.__name__}: {value}")
        return count / (float(value) - started)
    finally:
        proc.join(15)
        if proc.is_alive():
            proc.kill()  # gerritlib's watcher thread never ends by itself
            proc.join()
