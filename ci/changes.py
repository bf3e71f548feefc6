"""The change record: one patchset of one Gerrit change, as every part of the CI sees it.

The listener makes it from an event or a `gerrit query` answer, the queue
stores it, the worker reads it back from the database and hands it to the
job, and the renderer puts its fields in the job's files. One frozen value
end to end: nothing converts it by hand on the way. All its text comes from
Gerrit and is untrusted (and often not ASCII).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from ci.errors import PermanentError

if TYPE_CHECKING:
    from ci.models import Change, Patchset


@dataclass(frozen=True)
class ChangeInfo:
    """A change and one of its patchsets (only what Gerrit told us; the rest empty)."""

    number: int
    project: str
    branch: str
    patchset: int
    subject: str = ""
    owner_name: str = ""
    owner_email: str = ""
    url: str = ""
    status: str = "NEW"
    revision: str = ""
    ref: str = ""
    uploader_name: str = ""
    # The files the patchset touches; None until someone asked Gerrit.
    files: tuple[str, ...] | None = None

    @property
    def owner(self) -> str:
        """The owner's name, as jobs show it."""
        return self.owner_name

    @property
    def branch_tip(self) -> bool:
        """A baseline build's record (ci/baseline.py): no change (number 0); the ref to
        test is the branch itself."""
        return self.number == 0 and self.ref == f"refs/heads/{self.branch}"


class NoSuchPatchset(PermanentError, ValueError):
    """Gerrit's answer holds no such patch set (or none at all): asking again won't help."""


def change_ref(number: int, patchset: int) -> str:
    """Gerrit's ref for a patchset: refs/changes/<last two digits>/<change>/<patchset>."""
    return f"refs/changes/{number % 100:02d}/{number}/{patchset}"


def without_nul(info: ChangeInfo) -> ChangeInfo:
    """`info` with NUL characters dropped from its text: PostgreSQL refuses them
    in text and JSON columns, and Gerrit's JSON may carry one escaped (`\\u0000`)."""
    changes: dict[str, Any] = {}
    for field in fields(info):
        value = getattr(info, field.name)
        if isinstance(value, str) and "\x00" in value:
            changes[field.name] = value.replace("\x00", "")
    if info.files is not None and any("\x00" in name for name in info.files):
        changes["files"] = tuple(name.replace("\x00", "") for name in info.files)
    return replace(info, **changes) if changes else info


def change_info_from_query(row: dict[str, Any], patchset: int | None) -> ChangeInfo:
    """The record of one `gerrit query --format=JSON` row: patchset `patchset`, or the
    newest listed. Raises NoSuchPatchset when the row does not hold it."""
    sets = row.get("patchSets") or ([row["currentPatchSet"]] if "currentPatchSet" in row else [])
    if not sets:
        raise NoSuchPatchset(f"change {row.get('number')} has no patch sets in the query answer")
    chosen = sets[-1] if patchset is None else next(
        (p for p in sets if int(p["number"]) == patchset), None)
    if chosen is None:
        raise NoSuchPatchset(f"change {row.get('number')} has no patch set {patchset}")
    files = chosen.get("files")
    owner = row.get("owner") or {}
    uploader = chosen.get("uploader") or {}
    return ChangeInfo(
        number=int(row["number"]), project=str(row["project"]), branch=str(row["branch"]),
        patchset=int(chosen["number"]), subject=row.get("subject", ""),
        owner_name=owner.get("name", ""), owner_email=owner.get("email", ""),
        url=row.get("url", ""), status=row.get("status", "NEW"),
        revision=chosen.get("revision", ""), ref=chosen.get("ref", ""),
        uploader_name=uploader.get("name", ""),
        files=tuple(f["file"] for f in files if not f["file"].startswith("/")) if files else None,
    )


def change_info_from_rows(change: Change, patchset: Patchset) -> ChangeInfo:
    """The record of a stored change and patchset (what a build runs)."""
    return ChangeInfo(
        number=change.number, project=change.project, branch=change.branch,
        patchset=patchset.number, subject=change.subject, owner_name=change.owner_name,
        owner_email=change.owner_email, url=change.url, status=change.status,
        revision=patchset.revision, ref=patchset.ref, uploader_name=patchset.uploader_name,
        files=tuple(patchset.files) if patchset.files is not None else None,
    )
