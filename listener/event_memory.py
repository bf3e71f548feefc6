"""What the listener remembers of recent events, to store each one once.

Gerrit may send a line twice (a replay after a reconnect), and catch-up makes
up events the stream may also have delivered; this remembers the last
`remember` change events' identities (`store_key`), patch sets, comments and
closes. Not thread-safe: listener/event_store.py holds its lock around it.
Every line of a burst comes through `admit`, so each memory grows by one entry
at most per line and one pop bounds it.
"""

from __future__ import annotations

from collections import OrderedDict

from listener.catchup import same_comment
from listener.events import CATCH_UP_SOURCE, Peek

StoreKey = tuple[object, ...]
_CLOSING = frozenset({"change-abandoned", "change-merged", "change-restored"})


def store_key(event: Peek) -> StoreKey | None:
    """`listener.events.dedup_key` of the line, plus a comment's text: one reviewer's
    two comments of one second (catch-up's timestamps are whole seconds: "lgtm"
    then "recheck") are two events."""
    if event.number is None or not event.is_change_event:
        return None
    key = (event.type, event.number, event.patchset, event.created_on, event.actor)
    return (*key, event.comment) if event.type == "comment-added" else key


class RecentEvents:
    """The identities, patch sets, comments and closes of recent change events."""

    def __init__(self, remember: int) -> None:
        self.remember = remember
        self._seen: OrderedDict[StoreKey, None] = OrderedDict()
        self._patchsets: OrderedDict[tuple[int, int], None] = OrderedDict()
        # (change, author, text) -> [(timestamp, made up by catch-up)] of comment-added.
        self._comments: OrderedDict[tuple[int, str, str], list[tuple[int, bool]]] = \
            OrderedDict()
        # change -> its newest abandoned/merged/restored event type (None: none seen).
        self._changes: OrderedDict[int, str | None] = OrderedDict()

    def admit(self, event: Peek) -> bool:
        """Remember `event`; False (and nothing remembered) if it was seen already."""
        key = store_key(event)
        if key is None:
            return True  # not a change event: never de-duplicated
        if key in self._seen or (event.type == "comment-added" and self._known_comment(event)):
            return False
        self._note(event, key)
        return True

    def note(self, event: Peek) -> None:
        """Remember `event` (a stored one, read back after a restart)."""
        key = store_key(event)
        if key is not None:
            self._note(event, key)

    def seen_patchset(self, change: int, patchset: int) -> bool:
        return (change, patchset) in self._patchsets

    def seen_change(self, change: int) -> bool:
        return change in self._changes

    def last_status_event(self, change: int) -> str | None:
        return self._changes.get(change)

    def _known_comment(self, event: Peek) -> bool:
        """A made-up comment the stream delivered (or the other way round): the two
        timestamps differ by a second or so, so the exact key misses it."""
        if event.created_on is None or event.number is None:
            return False
        made_up = event.source == CATCH_UP_SOURCE
        return any(
            (made_up or was_made_up) and same_comment(ts, event.created_on)
            for ts, was_made_up in self._comments.get(
                (event.number, event.author, event.comment.strip()), ()))

    def _note(self, event: Peek, key: StoreKey) -> None:
        remember = self.remember
        seen = self._seen
        seen[key] = None
        if len(seen) > remember:
            seen.popitem(last=False)
        number = event.number
        assert number is not None  # a store key names the change
        kind = event.type
        if kind == "patchset-created" and event.patchset is not None:
            patchsets = self._patchsets
            patchsets[(number, event.patchset)] = None
            if len(patchsets) > remember:
                patchsets.popitem(last=False)
        elif kind == "comment-added" and event.created_on is not None:
            comment = (number, event.author, event.comment.strip())
            comments = self._comments
            comments.setdefault(comment, []).append(
                (event.created_on, event.source == CATCH_UP_SOURCE))
            comments.move_to_end(comment)
            if len(comments) > remember:
                comments.popitem(last=False)
        changes = self._changes
        if kind in _CLOSING:
            changes[number] = kind
            changes.move_to_end(number)
        elif number in changes:
            changes.move_to_end(number)
        else:
            changes[number] = None
        if len(changes) > remember:
            changes.popitem(last=False)
