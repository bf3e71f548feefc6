"""Typed Gerrit stream events, parsed from one raw `stream-events` line.

Gerrit's JSON changed across eras (tests/fixtures/gerrit holds real samples): numbers
were strings before 2.14 and integers after, `project` is a string over SSH
but `{"name": ...}` from the events-log plugin or webhooks, and "any field may
be missing". `parse_event` absorbs all of that and never raises: a line that
is not a JSON object becomes a `ParseError`, an unknown type an `OtherEvent`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

from ci.changes import ChangeInfo

logger = logging.getLogger(__name__)

# The marker the catch-up writes into the raw JSON of the events it makes up.
CATCH_UP_SOURCE = "catch-up"


@dataclass(frozen=True)
class Account:
    """A Gerrit user as events show it (any part may be empty)."""

    name: str = ""
    email: str = ""
    username: str = ""


@dataclass(frozen=True)
class Approval:
    """One label of a comment-added event; values are strings on the wire."""

    label: str
    value: int | None
    old_value: int | None = None


@dataclass(frozen=True)
class GerritEvent:
    """What every event has: its type and (usually) when Gerrit created it."""

    type: str
    created_on: int | None = None
    source: str = "stream"  # "catch-up" for events made up after downtime
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class ChangeEvent(GerritEvent):
    """An event about a change; `change` is set when it names a patchset too."""

    number: int | None = None
    project: str = ""
    branch: str = ""
    change: ChangeInfo | None = None


@dataclass(frozen=True)
class PatchsetCreated(ChangeEvent):
    uploader: Account = field(default_factory=Account)


@dataclass(frozen=True)
class CommentAdded(ChangeEvent):
    author: Account = field(default_factory=Account)
    comment: str = ""
    approvals: tuple[Approval, ...] = ()


@dataclass(frozen=True)
class ChangeAbandoned(ChangeEvent):
    abandoner: Account = field(default_factory=Account)
    reason: str = ""


@dataclass(frozen=True)
class ChangeMerged(ChangeEvent):
    submitter: Account = field(default_factory=Account)


@dataclass(frozen=True)
class ChangeRestored(ChangeEvent):
    restorer: Account = field(default_factory=Account)
    reason: str = ""


@dataclass(frozen=True)
class DroppedOutput(GerritEvent):
    """Gerrit's per-connection queue overflowed: events were lost (catch up)."""


@dataclass(frozen=True)
class OtherEvent(ChangeEvent):
    """Any type the CI does not act on (ref-updated, reviewer-added, plugins...)."""


@dataclass(frozen=True)
class ParseError:
    """A line that is not a JSON object; kept so nothing is silently lost."""

    line: str
    error: str
    type: str = "invalid"


Parsed = GerritEvent | ParseError


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):  # {"name": ...} in events-log / webhook transports
        return _text(value.get("name") or value.get("key") or value.get("id"))
    return str(value)


def _int(value: object) -> int | None:
    """Gerrit numbers are strings before 2.14, integers after; anything else is None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _account(value: object) -> Account:
    data = _dict(value)
    return Account(_text(data.get("name")), _text(data.get("email")),
                   _text(data.get("username")))


def _approvals(value: object) -> tuple[Approval, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(
        Approval(_text(a.get("type")), _int(a.get("value")), _int(a.get("oldValue")))
        for a in value if isinstance(a, dict)
    )


def _files(value: object) -> tuple[str, ...] | None:
    """A patch set's `files` (catch-up's events carry them, the stream's never do),
    Gerrit's magic files (`/COMMIT_MSG`, ...) left out, as ci.changes does."""
    if not isinstance(value, list):
        return None
    names = (_text(f.get("file")) for f in value if isinstance(f, dict))
    return tuple(name for name in names if name and not name.startswith("/"))


def _change_fields(data: dict[str, Any]) -> dict[str, Any]:
    change = _dict(data.get("change"))
    patchset = _dict(data.get("patchSet"))
    number = _int(change.get("number"))
    project = _text(change.get("project")) or _text(data.get("project"))
    branch = _text(change.get("branch"))
    if not branch:
        branch = _text(data.get("refName")).removeprefix("refs/heads/")
    ps_number = _int(patchset.get("number"))
    info = None
    if number is not None and ps_number is not None:
        owner = _account(change.get("owner"))
        uploader = _account(patchset.get("uploader") or data.get("uploader"))
        info = ChangeInfo(
            number=number,
            project=project,
            branch=branch,
            patchset=ps_number,
            subject=_text(change.get("subject")),
            owner_name=owner.name or owner.username,
            owner_email=owner.email,
            url=_text(change.get("url")),
            status=_text(change.get("status")) or "NEW",
            revision=_text(patchset.get("revision")),
            ref=_text(patchset.get("ref")),
            uploader_name=uploader.name or uploader.username,
            files=_files(patchset.get("files")),
        )
    return {"number": number, "project": project, "branch": branch, "change": info}


def event_from_dict(data: dict[str, Any]) -> GerritEvent:
    """The typed event for an already-decoded stream-events object."""
    kind = _text(data.get("type")) or "unknown"
    common: dict[str, Any] = {
        "type": kind,
        "created_on": _int(data.get("eventCreatedOn")),
        "source": _text(data.get("source")) or "stream",
        "data": data,
    }
    if kind == "dropped-output":
        return DroppedOutput(**common)
    common.update(_change_fields(data))
    if kind == "patchset-created":
        return PatchsetCreated(**common, uploader=_account(data.get("uploader")))
    if kind == "comment-added":
        return CommentAdded(**common, author=_account(data.get("author")),
                            comment=_text(data.get("comment")),
                            approvals=_approvals(data.get("approvals")))
    if kind == "change-abandoned":
        return ChangeAbandoned(**common, abandoner=_account(data.get("abandoner")),
                               reason=_text(data.get("reason")))
    if kind == "change-merged":
        return ChangeMerged(**common, submitter=_account(data.get("submitter")))
    if kind == "change-restored":
        return ChangeRestored(**common, restorer=_account(data.get("restorer")),
                              reason=_text(data.get("reason")))
    return OtherEvent(**common)


@dataclass(frozen=True, slots=True)
class Peek:
    """What the listener reads of a line before storing it: enough to drop a
    duplicate and to notice dropped-output, nothing more (the typed parse of
    `event_from_dict` waits for the scheduler, off the intake's hot path).

    `actor` is the same as in `dedup_key`, `author` the comment's author
    (username, else name), `patchset` None unless the event names both a
    change and a patch set, as `ChangeEvent.change` is.
    """

    type: str
    number: int | None = None
    patchset: int | None = None
    created_on: int | None = None
    actor: str = ""
    author: str = ""
    comment: str = ""
    source: str = "stream"

    @property
    def is_change_event(self) -> bool:
        """What `ChangeEvent` is among the typed events: anything but dropped-output."""
        return self.type != "dropped-output"


_ACTORS = ("author", "uploader", "abandoner", "submitter", "restorer")


def _who(value: object) -> str:
    if not isinstance(value, dict):
        return ""
    username = value.get("username")
    if type(username) is not str:
        username = _text(username)
    if username:
        return username
    name = value.get("name")
    return name if type(name) is str else _text(name)


def peek(data: dict[str, Any]) -> Peek:
    """The de-duplication and routing fields of a decoded line (see `Peek`).

    Every line of a burst comes through here, so the usual shapes (strings
    and integers, Gerrit 2.14+) are taken as they are and only anything else
    goes through the tolerant `_text` / `_int`; the results are the same.
    """
    get = data.get
    kind = get("type")
    if type(kind) is not str or not kind:
        kind = _text(kind) or "unknown"
    source = get("source")
    if source is None:
        source = "stream"
    elif type(source) is not str or not source:
        source = _text(source) or "stream"
    created_on = get("eventCreatedOn")
    if type(created_on) is not int:
        created_on = _int(created_on)
    if kind == "dropped-output":
        return Peek(kind, created_on=created_on, source=source)
    change = get("change")
    number = change.get("number") if type(change) is dict else None
    if type(number) is not int:
        number = _int(number)
    patchset = None
    if number is not None:
        ps = get("patchSet")
        patchset = ps.get("number") if type(ps) is dict else None
        if type(patchset) is not int:
            patchset = _int(patchset)
    actor = ""
    for key in _ACTORS:
        if key in data:
            actor = _who(data[key])
            break
    if kind == "comment-added":
        comment = get("comment")
        return Peek(kind, number, patchset, created_on, actor, _who(get("author")),
                    comment if type(comment) is str else _text(comment), source)
    return Peek(kind, number, patchset, created_on, actor, source=source)


def peek_line(line: bytes | str) -> Peek | ParseError:
    """`peek` of one raw line, or a ParseError (never raises)."""
    data = decode(line)
    return data if isinstance(data, ParseError) else peek(data)


def decode(line: bytes | str) -> dict[str, Any] | ParseError:
    """The JSON object of one line, or a ParseError (never raises)."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        return ParseError(text, str(exc))
    if not isinstance(data, dict):
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        return ParseError(text, f"not a JSON object but {type(data).__name__}")
    return data


def parse_event(line: bytes | str) -> Parsed:
    """Parse one raw stream-events line into a typed event (never raises)."""
    data = decode(line)
    if isinstance(data, ParseError):
        return data
    return event_from_dict(data)


DedupKey = tuple[str, int, int | None, int | None, str]


def dedup_key(event: GerritEvent) -> DedupKey | None:
    """Events with the same key are the same event seen twice (after a reconnect).

    Only change events have an identity worth comparing: type, change,
    patchset, eventCreatedOn and who acted (two people may comment on one
    patchset within the same second). Anything else is never de-duplicated,
    because two ref-updated events of one second are two real events.
    """
    if not isinstance(event, ChangeEvent) or event.number is None:
        return None
    ps = event.change.patchset if event.change else None
    actor = ""
    for key in ("author", "uploader", "abandoner", "submitter", "restorer"):
        if key in event.data:
            actor = _account(event.data[key]).username or _account(event.data[key]).name
            break
    return (event.type, event.number, ps, event.created_on, actor)
