"""A worker's private staging directories: where a job collects logs before
they are redacted and published (runners/logs.py `publish_logs`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


class StagingDirs:
    """Private (0700), empty directories, one per build. One a build left empty
    is kept for the next build: creating and removing one costs a no-op build
    ~0.5 ms of kernel time. Shared by a worker's threads (list append and pop
    are atomic)."""

    def __init__(self) -> None:
        self._spare: list[Path] = []

    def take(self) -> Path:
        """An empty private directory for one build's collected files."""
        try:
            return self._spare.pop()
        except IndexError:
            return Path(tempfile.mkdtemp(prefix="hyperv-ci-build-"))

    def keep_if_empty(self, staging: Path) -> bool:
        """True if the build staged nothing: the directory is kept for the next one."""
        try:
            with os.scandir(staging) as entries:
                if next(entries, None) is not None:
                    return False
        except OSError:  # the job removed it
            return False
        self._spare.append(staging)
        return True

    def drop(self) -> None:
        """Remove the kept directories (the worker is stopping)."""
        while self._spare:
            with contextlib.suppress(OSError, IndexError):  # another thread took it
                self._spare.pop().rmdir()
