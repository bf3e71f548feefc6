"""The commands the simulated Gerrit answers over SSH, with Gerrit's outputs and exit codes.

Gerrit re-parses the exec command line, so do we (`shlex.split`). Errors
follow Gerrit: a bad argument is `fatal: ...` on stderr with exit status 1; a
bad query is an `{"type":"error"}` row on stdout with exit status 0.
"""

from __future__ import annotations

import json
import queue
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paramiko

from sim.gerrit_labels import LabelRejected, format_value
from sim.gerrit_state import QueryError, SimGerritError, wire_json

if TYPE_CHECKING:
    from sim.gerrit import SimGerrit

_ADMIN = "admin"
_BATCH = 512  # events sent per write while a stream session catches up


class _Fatal(Exception):
    """Ends a command with `fatal: <message>` and exit status 1."""


@dataclass
class _Session:
    sim: SimGerrit
    channel: paramiko.Channel
    username: str

    def out(self, text: str) -> None:
        self.channel.sendall(text.encode("utf-8"))

    def err(self, text: str) -> None:
        self.channel.sendall_stderr(text.encode("utf-8"))

    def read_stdin(self) -> bytes:
        chunks = []
        while data := self.channel.recv(65536):
            chunks.append(data)
        return b"".join(chunks)


def _split(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:
        # gerritlib sends `gerrit query ... 12345"`: tolerate that one stray quote.
        if command.endswith('"'):
            try:
                return shlex.split(command[:-1])
            except ValueError:
                pass
        raise _Fatal("unterminated quoted string in the command line") from None


# spelling -> (canonical name, takes a value)
Spec = dict[str, tuple[str, bool]]


def _parse(args: list[str], spec: Spec) -> tuple[dict[str, list[str]], list[str]]:
    """args4j-style options (anywhere, `--opt V` or `--opt=V`) and positional arguments."""
    opts: dict[str, list[str]] = {}
    positional: list[str] = []
    it = iter(args)
    for arg in it:
        if arg == "--":
            positional.extend(it)
            break
        name, eq, inline = arg.partition("=")
        if arg.startswith("-") and name in spec:
            canonical, valued = spec[name]
            if valued:
                value = inline if eq else next(it, None)
                if value is None:
                    raise _Fatal(f'Option "{name}" takes an operand')
                opts.setdefault(canonical, []).append(value)
            else:
                opts.setdefault(canonical, []).append("true")
        elif arg.startswith("-") and ":" not in arg:
            # `-age:1d` style query terms are arguments, anything else is a bad option.
            raise _Fatal(f'"{arg}" is not a valid option')
        else:
            positional.append(arg)
    return opts, positional


def _version(s: _Session, args: list[str]) -> int:
    from sim.gerrit import VERSION

    s.out(f"gerrit version {VERSION}\n")
    return 0


_QUERY: Spec = {"--format": ("format", True), "--start": ("start", True), "-S": ("start", True),
                "--current-patch-set": ("current_patch_set", False),
                "--patch-sets": ("patch_sets", False), "--all-approvals": ("all_approvals", False),
                "--files": ("files", False), "--comments": ("comments", False),
                "--commit-message": ("commit_message", False)}


def _query(s: _Session, args: list[str]) -> int:
    started = time.monotonic()
    opts, terms = _parse(args, _QUERY)
    if opts.get("format", ["TEXT"])[-1].upper() != "JSON":
        raise _Fatal("the simulated Gerrit answers only --format=JSON")
    start_text = opts.get("start", ["0"])[-1]
    if not start_text.isdigit():
        raise _Fatal(f'"{start_text}" is not a valid value for "--start"')
    # `--files` lists each shown patch set's files as Gerrit's EventFactory
    # .addPatchSetFileNames does (PatchAttribute: file, fileOld, type, insertions,
    # deletions <= 0, `/COMMIT_MSG` first), and only with --current-patch-set or
    # --patch-sets (Documentation/cmd-query.txt): GerritState.query follows both.
    flags = {k: True for k in opts if k not in ("format", "start")}
    try:
        rows, more = s.sim.state.query(" ".join(terms), start=int(start_text),
                                       limit=s.sim.query_limit, **flags)
    except QueryError as exc:
        s.out(wire_json({"type": "error", "message": str(exc)}) + "\n")
        return 0
    lines = [wire_json(row) for row in rows]
    lines.append(wire_json({"type": "stats", "rowCount": len(rows),
                            "runTimeMilliseconds": int((time.monotonic() - started) * 1000),
                            "moreChanges": more}))
    s.out("\n".join(lines) + "\n")
    return 0


_REVIEW: Spec = {"--project": ("project", True), "-p": ("project", True),
                 "--branch": ("branch", True), "-b": ("branch", True),
                 "--message": ("message", True), "-m": ("message", True),
                 "--label": ("label", True), "-l": ("label", True),
                 "--verified": ("Verified", True), "--code-review": ("Code-Review", True),
                 "--tag": ("tag", True), "-t": ("tag", True),
                 "--notify": ("notify", True), "-n": ("notify", True),
                 "--submit": ("submit", False), "-s": ("submit", False),
                 "--abandon": ("abandon", False)}
# Gerrit 2.15 removed `--strict-labels` (releases/2.15.md, "Strict validation on
# labels"): it is an unknown option now, like any other.


def _vote(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _Fatal(f'"{text}" is not a valid label value') from None


def _review(s: _Session, args: list[str]) -> int:
    opts, targets = _parse(args, _REVIEW)
    if not targets:
        raise _Fatal('Argument "{COMMIT | CHANGE,PATCHSET}" is required')
    if "submit" in opts and "abandon" in opts:
        raise _Fatal("abandon and submit actions are mutually exclusive")
    state = s.sim.state
    labels: dict[str, int] = {}
    for item in opts.get("label", []):
        name, eq, value = item.partition("=")
        labels[name] = _vote(value) if eq else 1
    for name in ("Verified", "Code-Review"):
        if name in opts:
            labels[name] = _option_vote(name, opts[name][-1], state.labels.labels.get(name))
    project = opts.get("project", [None])[-1]
    branch = opts.get("branch", [None])[-1]
    resolved = [state.find_patchset(t, project=project, branch=branch) for t in targets]
    failed = False
    for change, patchset in resolved:
        try:
            state.review(change, patchset, author=s.username,
                         message=opts.get("message", [""])[-1], labels=labels,
                         tag=opts.get("tag", [None])[-1])
        except LabelRejected as exc:
            # ReviewCommand.reviewPatchSet turns the REST error into die(e)
            # ("fatal: ..."); run() prints it per patch set as `error: <that>\n`
            # through writeError (which adds a newline of its own), goes on
            # with the other patch sets, then fails the command.
            s.err(f"error: fatal: {exc}\n\n")
            failed = True
            continue
        if "abandon" in opts:
            state.abandon(change, by=s.username)
        if "submit" in opts:
            state.merge(change, by=s.username)
    if failed:
        raise _Fatal("one or more reviews failed; review output above")
    return 0


def _option_vote(name: str, text: str, span: tuple[int, int] | None) -> int:
    """`--verified N`: ReviewCommand.LabelHandler range-checks it while parsing."""
    if span is None:  # the option exists only for a label All-Projects defines
        raise _Fatal(f'"--{name.lower()}" is not a valid option')
    value = _vote(text)
    if not span[0] <= value <= span[1]:
        raise _Fatal(f'"{text}" must be in range {format_value(span[0])}..'
                     f'{format_value(span[1])} for "--{name.lower()}"')
    return value


def _stream_events(s: _Session, args: list[str]) -> int:
    opts, extra = _parse(args, {"--subscribe": ("types", True), "-s": ("types", True)})
    if extra:
        raise _Fatal(f'"{extra[0]}" is not a valid option')
    types = set(opts.get("types", []))
    pending: queue.Queue[bytes] = queue.Queue(maxsize=s.sim.stream_queue_size)
    dropped = threading.Event()

    def deliver(line: str | bytes) -> None:
        if types:
            try:
                if json.loads(line).get("type") not in types:
                    return
            except (ValueError, AttributeError):
                return
        try:
            pending.put_nowait(line.encode("utf-8") if isinstance(line, str) else line)
        except queue.Full:
            dropped.set()

    unsubscribe = s.sim.state.subscribe(deliver)
    stdin_open = True
    try:
        while not s.sim.stopping.is_set() and not s.channel.closed:
            batch: list[bytes] = []
            try:
                batch.append(pending.get(timeout=0.1))
                while len(batch) < _BATCH:
                    batch.append(pending.get_nowait())
            except queue.Empty:
                pass
            if dropped.is_set() and pending.empty():
                dropped.clear()
                batch.append(wire_json({"type": "dropped-output"}).encode("utf-8"))
            if batch:
                s.channel.sendall(b"\n".join(batch) + b"\n")
            if stdin_open and s.channel.recv_ready():
                data = s.channel.recv(1024)
                if b"\x03" in data:
                    return 130  # interrupted, as Zuul's watcher expects
                stdin_open = bool(data)
        return 0
    finally:
        unsubscribe()


def _admin(action: Callable[[Any, dict[str, Any]], Any]) -> Callable[[_Session, list[str]], int]:
    """A `sim-*` control command: one JSON object argument, one JSON result line."""

    def run(s: _Session, args: list[str]) -> int:
        if s.username != _ADMIN:
            raise _Fatal(f"{s.username} does not have \"Administrate Server\" capability.")
        try:
            payload = json.loads(args[0]) if args else {}
        except ValueError:
            raise _Fatal("the argument must be a JSON object") from None
        if not isinstance(payload, dict):
            raise _Fatal("the argument must be a JSON object")
        try:
            result = action(s, payload)
        except TypeError as exc:
            raise _Fatal(f"bad arguments: {exc}") from None
        s.out(json.dumps(result, ensure_ascii=False) + "\n")
        return 0

    return run


def _grant(s: _Session, payload: dict[str, Any]) -> dict[str, Any]:
    account = payload.get("account")
    if not isinstance(account, str) or not account:
        raise _Fatal("sim-grant needs an account")
    try:
        labels = {str(k): (int(v[0]), int(v[1])) for k, v in payload.get("labels", {}).items()}
    except (AttributeError, IndexError, TypeError, ValueError):
        raise _Fatal('labels must be {"LABEL": [MIN, MAX], ...}') from None
    s.sim.state.grant(account, labels)
    return {"account": account, "labels": {k: list(v) for k, v in labels.items()}}


def _replay(s: _Session, payload: dict[str, Any]) -> dict[str, int]:
    # Bytes, never decoded: a test must be able to send what a broken plugin
    # might (a line that is not UTF-8) without the other lines being refused.
    lines = [line for line in s.read_stdin().split(b"\n") if line.strip()]
    for line in lines:
        s.sim.emit_raw(line)
    return {"emitted": len(lines)}


_GERRIT: dict[str, Callable[[_Session, list[str]], int]] = {
    "version": _version, "query": _query, "review": _review, "stream-events": _stream_events}
_SIM: dict[str, Callable[[_Session, list[str]], int]] = {
    "sim-push": _admin(lambda s, p: s.sim.state.push(**p)),
    "sim-comment": _admin(lambda s, p: s.sim.state.comment(**p) or {"ok": True}),
    "sim-abandon": _admin(lambda s, p: s.sim.state.abandon(**p) or {"ok": True}),
    "sim-merge": _admin(lambda s, p: {"newRev": s.sim.state.merge(**p)}),
    "sim-replay": _admin(_replay),
    "sim-grant": _admin(_grant),
    "sim-reviews": _admin(lambda s, p: s.sim.state.reviews()),
}


def run_command(sim: SimGerrit, channel: paramiko.Channel, username: str, command: str) -> int:
    """Run one exec request; returns the exit status."""
    session = _Session(sim, channel, username)
    try:
        args = _split(command)
        if args[:1] == ["gerrit"] and len(args) > 1 and args[1] in _GERRIT:
            return _GERRIT[args[1]](session, args[2:])
        if args and args[0] in _SIM:
            return _SIM[args[0]](session, args[1:])
        name = " ".join(args[:2]) if args[:1] == ["gerrit"] else (args or [""])[0]
        raise _Fatal(f"{name.replace(' ', ': ')}: not found")
    except (_Fatal, SimGerritError) as exc:
        channel.sendall_stderr(f"fatal: {exc}\n".encode())
        return 1
