"""Unpacking the controller's log archive (collect-logs.sh's `logs.tar.gz`).

One download of the archive replaces a walk of the log tree over SFTP (a
listing per directory and an open, read and close per file: hundreds of round
trips for a devstack run's logs). The archive comes from the node, so it is
untrusted: only regular files are written, each under `target`; a symbolic or
hard link is written as a copy of the file it names when that file is in the
archive, and skipped otherwise (a link out of the tree, a dangling one).
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path, PurePosixPath


def member_path(name: str, strip: str) -> PurePosixPath | None:
    """The member's path below `strip` (its top directory), None if it has none or
    could leave the target (absolute, `..`)."""
    path = PurePosixPath(name.replace("\\", "/"))
    parts = [p for p in path.parts if p not in ("", ".")]
    if path.is_absolute() or ".." in parts or len(parts) < 2 or parts[0] != strip:
        return None
    return PurePosixPath(*parts[1:])


def extract_tar(archive: Path, target: Path, strip: str = "logs") -> int:
    """Unpack the files under the archive's `strip/` directory into `target`; the count."""
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    count = 0
    with tarfile.open(archive, "r:*") as tar:
        for member in tar.getmembers():
            if not (member.isfile() or member.issym() or member.islnk()):
                continue
            relative = member_path(member.name, strip)
            if relative is None:
                continue
            dest = (root / relative).resolve()
            if not dest.is_relative_to(root) or dest == root:
                continue
            try:
                source = tar.extractfile(member)  # a link: the archived file it names
            except KeyError:
                source = None
            if source is None:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with source, dest.open("wb") as out:
                shutil.copyfileobj(source, out)
            count += 1
    return count
