"""Step 1 of the trigger: what Gerrit must tell us about an event, asked outside
any database transaction (a slow Gerrit never holds SQLite's write lock).

Whether an event asks for a build at all is decided from the event alone
(`target`, pure filters). For an upload the watching entry filters by file,
the files come with the event (catch-up's made-up uploads carry them), from
the database (a patchset seen before), from the page's one batched query
(`prefetch_files`: `change:A OR change:B ...`), or, failing those, from one
query of its own. A recheck of a patchset we never stored asks Gerrit for the
change's current patch set.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci.changes import ChangeInfo, change_info_from_query
from ci.config import Config
from ci.db import transaction
from ci.models import Change, Patchset
from ci.report_checks import CLOSED
from listener.events import CommentAdded, Parsed, PatchsetCreated
from listener.filters import is_ignored_author, is_recheck, needs_files, watched_projects

logger = logging.getLogger(__name__)


class GerritLookup(Protocol):
    """The part of ci.gerrit.GerritClient the trigger uses (a seam for tests)."""

    def changed_files(self, change: int, patchset: int) -> list[str]: ...

    def files_of(self, patchsets: Iterable[tuple[int, int]]
                 ) -> dict[tuple[int, int], list[str]]: ...

    def query(self, q: str, *, current_patch_set: bool = ...,
              files: bool = ...) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Target:
    """The patchset an event asks us to build (files filled in when needed), or why not."""

    info: ChangeInfo | None = None
    note: str = ""


class Gatherer:
    """Step 1 for one scheduler: `gather` an event's target, `prefetch_files` of a page."""

    def __init__(self, config: Config, sessions: sessionmaker[Session],
                 lookup: GerritLookup) -> None:
        self.config = config
        self.sessions = sessions
        self.lookup = lookup
        # Files of the page's uploads, fetched in one batched query (`prefetch_files`).
        self.prefetched: dict[tuple[int, int], list[str]] = {}

    def prefetch_files(self, events: list[Parsed]) -> None:
        """Ask Gerrit once for the files of every upload in the page that needs them
        (`files_of`: one query per 100 changes), instead of once per change.

        Best effort: an upload the answer leaves out, or a failed batch, falls
        back to its own lookup in `gather`, with that lookup's retry rules.
        """
        wanted: list[tuple[int, int]] = []
        for event in events:
            if not isinstance(event, PatchsetCreated):
                continue
            info = self.target(event).info
            if (info is not None and info.files is None
                    and needs_files(self.config, info.project, info.branch)):
                wanted.append((info.number, info.patchset))
        if len(wanted) < 2:
            return  # one lookup is one query either way
        with transaction(self.sessions) as session:
            cached = {(number, ps) for number, ps, files in session.execute(
                select(Change.number, Patchset.number, Patchset.files).join(Change)
                .where(Change.number.in_({n for n, _ in wanted}))) if files is not None}
        missing = [pair for pair in wanted if pair not in cached]
        if len(missing) < 2:
            return
        try:
            self.prefetched.update(self.lookup.files_of(missing))
        except Exception as exc:
            logger.warning("batched files lookup of %s upload(s) failed (%s: %s); "
                           "asking change by change", len(missing), type(exc).__name__, exc)

    def reads_database(self, event: Parsed) -> bool:
        """Whether `gather` looks the event's patchset up in the database."""
        info = self.target(event).info
        return info is not None and not (isinstance(event, PatchsetCreated)
                                         and info.files is not None)

    # -- step 1: what Gerrit must tell us (no transaction open) --------------------------------

    def target(self, event: Parsed) -> Target:
        """The patchset to build, from the event alone (pure filters)."""
        if isinstance(event, CommentAdded):
            if is_ignored_author(self.config.gerrit, event.author):
                return Target(note="ignored: comment by our own or an ignored account")
            if not is_recheck(self.config.gerrit, event.comment):
                return Target(note="ignored: not a recheck")
        elif not isinstance(event, PatchsetCreated):
            return Target()
        info = event.change
        if info is None:
            return Target(note="ignored: the event names no change and patchset")
        if not watched_projects(self.config, info.project, info.branch):
            return Target(note=f"ignored: {info.project} {info.branch} is not watched")
        if info.status in CLOSED:
            # A recheck on an abandoned or merged change (Gerrit accepts comments
            # there): a build would only end in a report that is never sent.
            return Target(note=f"ignored: change {info.number} is closed ({info.status})")
        return Target(info)

    def gather(self, event: Parsed) -> Target:
        target = self.target(event)
        info = target.info
        if info is None or (isinstance(event, PatchsetCreated) and info.files is not None):
            return target  # catch-up's made-up uploads carry their files
        known, files = self._known(info)
        if isinstance(event, CommentAdded) and not known:
            rows = self.lookup.query(f"change:{info.number}", current_patch_set=True, files=True)
            if rows:
                current = change_info_from_query(rows[0], None)
                if current.patchset > info.patchset:
                    return Target(note=f"ignored: recheck of patchset {info.patchset}, "
                                       f"current is {current.patchset}")
                info = current
        if info.files is None and files is not None:
            info = replace(info, files=tuple(files))
        if info.files is None and needs_files(self.config, info.project, info.branch):
            found = self.prefetched.get((info.number, info.patchset))
            if found is None:
                found = self.lookup.changed_files(info.number, info.patchset)
            info = replace(info, files=tuple(found))
        return Target(info)

    def _known(self, info: ChangeInfo) -> tuple[bool, list[str] | None]:
        """Whether the patchset is in the database, and its cached file list."""
        with transaction(self.sessions) as session:
            files = session.execute(
                select(Patchset.files).join(Change)
                .where(Change.number == info.number, Patchset.number == info.patchset)
            ).first()
        return (files is not None, files[0] if files is not None else None)
