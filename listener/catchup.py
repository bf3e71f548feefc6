"""What the stream missed, rebuilt from `gerrit query` rows (pure functions, no I/O).

Gerrit replays nothing after a reconnect (stream-events has no resume point), so
the listener queries the watched projects and makes up the events Gerrit
would have sent, marked `"source": "catch-up"`:

- `patchset-created` for an open change's current patch set, with the
  patch set's `files` as the query listed them (a streamed event has none);
- `comment-added` for each review message (`--comments` rows carry only
  timestamp, reviewer and message) written since the last stored event: the
  scheduler's recheck filter then decides, as for a streamed comment;
- `change-abandoned` / `change-merged` for a change that closed, so its
  queued or running builds are aborted.

Whether a made-up event is new (never stored, never delivered by the
stream) is decided here too, from what the caller knows.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson

from listener.events import CATCH_UP_SOURCE

# A comment-added's `comment` is the change message, which starts with this
# header; messages without it ("Uploaded patch set 2.") never were comment-added.
_REVIEW_HEADER = re.compile(r"\s*Patch Set (\d+)\b")

# A streamed comment-added and the same message in a query row carry
# timestamps taken at slightly different moments (the event is created after
# the update commits): within this many seconds, same author and same text,
# they are one comment.
SAME_COMMENT_SECONDS = 60

CLOSED_EVENT = {"ABANDONED": "change-abandoned", "MERGED": "change-merged"}
_CLOSED_STATUS = {event: status for status, event in CLOSED_EVENT.items()}
_ACTOR_FIELD = {"change-abandoned": "abandoner", "change-merged": "submitter"}


def _change_attrs(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items()
            if k not in ("currentPatchSet", "patchSets", "comments", "type")}


def _patchset_attrs(patchset: dict[str, Any]) -> dict[str, Any]:
    # `files` stays (the query was asked for them): the scheduler then has the
    # changed files without one more query per change.
    return {k: v for k, v in patchset.items() if k != "approvals"}


def _envelope(kind: str, row: dict[str, Any], patchset: dict[str, Any],
              created_on: object, **fields: Any) -> bytes:
    """A change event the way stream-events frames it, marked as made up."""
    return orjson.dumps({
        "type": kind,
        "source": CATCH_UP_SOURCE,
        "change": _change_attrs(row),
        "patchSet": _patchset_attrs(patchset),
        **fields,
        "project": row.get("project"),
        "refName": f"refs/heads/{row.get('branch', '')}",
        "eventCreatedOn": created_on or int(time.time()),
    })


def synthetic_patchset_created(row: dict[str, Any], current: dict[str, Any]) -> bytes:
    """The patchset-created Gerrit would have sent, built from a query row."""
    return _envelope("patchset-created", row, current, current.get("createdOn"),
                     uploader=current.get("uploader", {}))


def _patchset(row: dict[str, Any], number: int) -> dict[str, Any] | None:
    """Patch set `number` of a row (from `--patch-sets` or `--current-patch-set`)."""
    candidates = [*row.get("patchSets", []), row.get("currentPatchSet") or {}]
    for patchset in candidates:
        if isinstance(patchset, dict) and str(patchset.get("number")) == str(number):
            return patchset
    return None


def synthetic_comments(row: dict[str, Any], since: int) -> list[bytes]:
    """A comment-added for each review message of the row written at or after `since`.

    A message whose patch set the row does not list is skipped: an event
    without the patch set's revision and ref would build nothing useful.
    """
    events = []
    for comment in row.get("comments") or []:
        if not isinstance(comment, dict):
            continue
        message = comment.get("message")
        timestamp = comment.get("timestamp")
        if not isinstance(message, str) or not isinstance(timestamp, int) or timestamp < since:
            continue
        header = _REVIEW_HEADER.match(message)
        patchset = _patchset(row, int(header.group(1))) if header else None
        if patchset is None:
            continue
        events.append(_envelope("comment-added", row, patchset, timestamp,
                                author=comment.get("reviewer") or {}, approvals=[],
                                comment=message))
    return events


def synthetic_close(row: dict[str, Any]) -> bytes | None:
    """The change-abandoned or change-merged of a closed change's row (else None)."""
    kind = CLOSED_EVENT.get(str(row.get("status", "")))
    current = row.get("currentPatchSet")
    if kind is None or not isinstance(current, dict):
        return None
    # The query does not say who closed it; lastUpdated is the latest it can have been.
    return _envelope(kind, row, current, row.get("lastUpdated"),
                     **{_ACTOR_FIELD[kind]: {}}, reason="")


def close_is_new(kind: str, *, last_status_event: str | None, stored_status: str | None,
                 seen: bool) -> bool:
    """Whether a made-up close must be stored.

    `last_status_event` is the newest abandoned/merged/restored event
    remembered for the change; `stored_status` its status in the `changes`
    table (None: never built); `seen` whether any event of it is remembered.
    A change the CI never heard of has no builds to abort.
    """
    if not seen and stored_status is None:
        return False
    if last_status_event is not None:  # newer than the table, which the scheduler updates
        return last_status_event != kind
    return stored_status != _CLOSED_STATUS[kind]


def same_comment(a: int, b: int) -> bool:
    """Two timestamps of one author's identical text on one change are one comment."""
    return abs(a - b) <= SAME_COMMENT_SECONDS
