"""What the reporter asks before a send, and what a failed send means.

Before a report goes out, Gerrit says whether its change is still open: a
vote on an abandoned or merged change misleads (and Gerrit refuses most of
them). One `gerrit query` answers for every report of a pass. A Gerrit that
cannot be asked is a failure of the send like any other (retried), never a
reason to send without asking.

A failed send is retried only when asking again may help; Gerrit's answers
that say the patch set or change is gone, or that the change closed, never
change, so those reports stop at once.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ci.errors import PermanentError, TransientError
from ci.gerrit_errors import GerritError

logger = logging.getLogger(__name__)

# Gerrit's change statuses (Documentation/json.txt, "change" status): NEW
# (and DRAFT on old servers) are open; these two are closed for good unless
# someone restores an abandoned change, which a recheck then builds afresh.
CLOSED = frozenset({"MERGED", "ABANDONED"})
# Statuses older than this are asked again (a pass of slow sends can take minutes).
STATUS_MAX_AGE = 60.0
# Terms per query: far below Gerrit's index.maxTerms, and one page of answers.
BATCH = 50


class StatusClient(Protocol):
    """The part of `ci.gerrit.GerritClient` the status check uses."""

    def query(self, query: str, *, current_patch_set: bool = ..., patch_sets: bool = ...,
              files: bool = ..., comments: bool = ...) -> list[dict[str, Any]]: ...


class CannotAsk(TransientError):
    """Gerrit could not be asked (down, or it refused the question): retry the send."""


def status_query(numbers: Iterable[int]) -> str:
    """`change:1 OR change:2 ...`: Gerrit's query language ORs terms
    (Documentation/user-search.txt, "Boolean Operators")."""
    return " OR ".join(f"change:{int(n)}" for n in sorted(set(numbers)))


def statuses_from_rows(rows: Iterable[dict[str, Any]]) -> dict[int, str]:
    """{change number: status} from `gerrit query` rows (old servers send numbers as text)."""
    found: dict[int, str] = {}
    for row in rows:
        number = row.get("number")
        if number is None or not str(number).isdigit():
            continue
        status = str(row.get("status") or "")
        if not status and row.get("open") is False:
            status = "CLOSED"  # json.txt: any field may be missing; `open` says enough
        found[int(number)] = status or "NEW"
    return found


def ask_statuses(client: StatusClient, numbers: Iterable[int]) -> dict[int, str | None]:
    """Each change's status; None for a change Gerrit does not show (deleted, or not
    visible to the CI account). Raises CannotAsk when Gerrit cannot answer."""
    wanted = sorted(set(numbers))
    answer: dict[int, str | None] = dict.fromkeys(wanted)
    for start in range(0, len(wanted), BATCH):
        chunk = wanted[start:start + BATCH]
        answer.update(_ask(client, chunk))
    return answer


def _ask(client: StatusClient, numbers: list[int]) -> dict[int, str]:
    try:
        return statuses_from_rows(client.query(status_query(numbers)))
    except GerritError as exc:
        if isinstance(exc, TransientError) or len(numbers) == 1:
            raise CannotAsk(f"cannot ask Gerrit whether the change is open: {exc}") from exc
        # Gerrit answered the combined question with an error (a server or proxy
        # that limits queries): ask change by change rather than not at all.
        logger.warning("status query for %s changes refused (%s); asking one by one",
                       len(numbers), exc)
        found: dict[int, str] = {}
        for number in numbers:
            found.update(_ask(client, [number]))
        return found
    except Exception as exc:
        raise CannotAsk(f"cannot ask Gerrit whether the change is open: "
                        f"{type(exc).__name__}: {exc}") from exc


def closed_reason(status: str | None) -> str | None:
    """`change closed (ABANDONED)` for a closed change, else None."""
    return f"change closed ({status})" if status in CLOSED or status == "CLOSED" else None


class ChangeStatuses:
    """The statuses of one reporter pass: asked once for every due report, kept a minute."""

    def __init__(self, *, max_age: float = STATUS_MAX_AGE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self.clock = clock
        self.queries = 0
        self._known: dict[int, str | None] = {}
        self._asked_at: float | None = None

    def status(self, client: StatusClient, number: int, due: Iterable[int] = ()) -> str | None:
        """The change's status (None: Gerrit does not show it), asking for it and the
        other `due` changes together when it is not known or too old."""
        now = self.clock()
        if self._asked_at is None or now - self._asked_at > self.max_age:
            self._known = ask_statuses(client, {number, *due})
            self._asked_at = now
            self.queries += 1
        elif number not in self._known:
            self._known.update(ask_statuses(client, [number]))
            self.queries += 1
        return self._known[number]


class Verdict(enum.Enum):
    RETRY = "retry"  # may work later: back off, within the retry budget
    FAIL_NOW = "fail-now"  # will never work: failed at once, with the reason
    CHANGE_CLOSED = "change-closed"  # Gerrit refused it because the change closed


@dataclass(frozen=True)
class SendFailure:
    verdict: Verdict
    reason: str


# Gerrit's own words for a send that can never succeed. PatchSetParser
# (java/com/google/gerrit/sshd/commands/PatchSetParser.java) resolves the
# CHANGE,PATCHSET argument: `"N,P" no such patch set`, `"N" no such change`,
# `change N not in project P`; ReviewCommand.run prints `no such change N`.
_GONE = ("no such patch set", "no such change", "not in project", "not in branch",
         "is not a valid patch set")
# PostReviewOp.validatePostSubmitLabels
# (java/com/google/gerrit/server/restapi/change/PostReviewOp.java): a vote on an
# abandoned change is refused as `change is closed`; on a merged change, a
# label without allowPostSubmit (Verified) is refused, and so is a lower vote.
_CLOSED = ("change is closed", "Voting on labels disallowed after submit",
           "Cannot reduce vote on labels for closed change")


def classify_send_error(exc: BaseException) -> SendFailure:
    """What a failed send means: retry it, fail it now, or the change closed."""
    text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, GerritError) else str(exc)
    if isinstance(exc, CannotAsk):
        # Before Gerrit's words: its message quotes the query's error.
        return SendFailure(Verdict.RETRY, str(exc))
    if isinstance(exc, GerritError):
        said = f"{exc}\n{exc.stderr}"
        closed = next((words for words in _CLOSED if words in said), None)
        if closed is not None:
            return SendFailure(Verdict.CHANGE_CLOSED, f"change closed (Gerrit: {closed})")
        if any(words in said for words in _GONE):
            # Said on a command's stderr, so GerritClient cannot tell it from a
            # command that died: the words decide.
            return SendFailure(Verdict.FAIL_NOW, text)
    if isinstance(exc, PermanentError):  # a refused vote, an answer that will not change
        return SendFailure(Verdict.FAIL_NOW, text)
    return SendFailure(Verdict.RETRY, text)
