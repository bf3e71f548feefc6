"""What Gerrit's answers mean, for both of our transports (SSH: ci/gerrit.py;
REST: ci/gerrit_rest.py): the error kinds, a refused vote, a message's limit.

Every failure surfaces as `GerritError`: `GerritUnavailable` (transient: ask
again later) or `GerritRejected` (permanent). A review Gerrit refuses for its
votes is `LabelRefused`. Light on purpose (no paramiko, no requests): the
commands that only need to name these errors import this module alone.
"""

from __future__ import annotations

import re

from ci.errors import HypervCIError, PermanentError, TransientError

MAX_MESSAGE_BYTES = 16000


class GerritError(HypervCIError):
    """A Gerrit command or connection failed: `GerritUnavailable` or `GerritRejected`.

    `transient` says whether asking again may help: a connection that failed
    or a command that died may work later (GerritUnavailable, a TransientError);
    an answer that says the change or patch set does not exist never will
    (GerritRejected, a PermanentError). `GerritError(..., transient=False)`
    makes a GerritRejected, and without it a GerritUnavailable, so every
    instance is one or the other.
    """

    def __new__(cls, *args: object, transient: bool = True, **kwargs: object) -> GerritError:
        if cls is GerritError:
            cls = GerritUnavailable if transient else GerritRejected
        return super().__new__(cls, *args)

    def __init__(self, message: str, *, exit_status: int | None = None, stderr: str = "",
                 transient: bool = True) -> None:
        detail = f" (exit status {exit_status})" if exit_status is not None else ""
        super().__init__(f"{message}{detail}" + (f": {stderr.strip()}" if stderr.strip() else ""))
        self.exit_status = exit_status
        self.stderr = stderr

    @property
    def transient(self) -> bool:
        return isinstance(self, TransientError)


class GerritUnavailable(GerritError, TransientError):
    """Gerrit could not be reached, or the command or link died: ask again later."""


class GerritRejected(GerritError, PermanentError):
    """Gerrit answered, and the answer will not change (no such patch set, a bad query)."""


class GerritRefused(GerritUnavailable):
    """The server's host key does not match known_hosts, or it refused our key.

    Still transient (it clears once an operator fixes known_hosts, the key or
    the account), but never a quiet retry: it means a configuration problem,
    or a server that is not the one we know.
    """


class LabelRefused(GerritRejected):
    """Gerrit refused a vote: permanent (resending the same vote fails the same way).

    Nothing of that review was recorded, the message included.
    """

    def __init__(self, label: str, value: int | None, message: str, *,
                 exit_status: int | None = None, stderr: str = "") -> None:
        super().__init__(f"Gerrit refused the vote: {message}", exit_status=exit_status)
        self.label = label
        self.value = value
        self.message = message
        self.stderr = stderr


# Gerrit's own words (PostReview.checkLabels, java/com/google/gerrit/server/
# restapi/change/PostReview.java): over SSH each comes as `error: fatal: <text>`
# followed by `fatal: one or more reviews failed; review output above`.
_REFUSALS = (
    # A value beyond the account's grant on the project: always refused.
    re.compile(r'Applying label "(?P<label>[^"]+)": (?P<value>-?\d+) is restricted'),
    # Only with the server's change.strictLabels (default false: dropped silently).
    re.compile(r'label "(?P<label>[^"]+)" is not a configured label'),
    re.compile(r'label "(?P<label>[^"]+)": (?P<value>-?\d+) is not a valid value'),
)


def label_refusal(stderr: str) -> tuple[str, int | None, str] | None:
    """(label, value, Gerrit's sentence) when `stderr` is a refused vote, else None."""
    for pattern in _REFUSALS:
        match = pattern.search(stderr)
        if match:
            value = match.groupdict().get("value")
            return match["label"], None if value is None else int(value), match[0]
    return None


def truncate_message(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """`message` cut to at most `limit` UTF-8 bytes, never inside a character."""
    data = message.encode("utf-8")
    if len(data) <= limit:
        return message
    return data[:limit].decode("utf-8", "ignore")
