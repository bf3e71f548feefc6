"""One devstack-hyperv build's prepared value, and the helpers its steps share.

`DevstackHypervRunner.prepare` returns a `PreparedBuild`; `run` makes its own
copy once the change has merged (rendered with the merge commit, and the
build's abort check for its commands), `collect` and `cleanup` take the one
`prepare` made.
"""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ci.config import NodeConfig
from runners.base import Executor, StopCheck
from runners.render import RenderedJob
from runners.ssh import SSHExecutor
from runners.winrm import WinRMExecutor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedBuild:
    """What `prepare` made ready for one build; `run`, `collect` and `cleanup` take it."""

    controller: NodeConfig
    hyperv: tuple[NodeConfig, ...]
    ssh: SSHExecutor  # connects on first use
    winrm: Mapping[str, WinRMExecutor]  # by node name
    # The job's files. `prepare` renders them without the merge commit (collect
    # and cleanup do not use it); `run` renders them again once it has merged.
    rendered: RenderedJob
    workdir: Path  # the worker-side scratch tree (merge, archives); removed by cleanup
    # The build's abort check, handed to every command `run` starts; None for
    # collect and cleanup, which must still run once the build is aborted.
    should_stop: StopCheck | None = None


def default_cache_dir() -> Path:
    """Where a worker keeps its per-project git caches between builds."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("HYPERV_CI_GIT_CACHE", str(Path(base) / "hyperv-ci" / "git")))


def close_build(executors: Sequence[Executor | None], workdir: Path) -> None:
    """Close the build's connections and remove its scratch tree."""
    for executor in executors:
        if executor is not None:
            try:
                executor.close()
            except Exception:  # closing a dead connection must not hide the result
                logger.debug("closing an executor failed", exc_info=True)
    shutil.rmtree(workdir, ignore_errors=True)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return f": {lines[-1][:300]}" if lines else ""


def extract_zip(archive: Path, target: Path) -> int:
    """Unpack a node's log archive under `target`, refusing paths that leave it."""
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    count = 0
    with zipfile.ZipFile(archive) as zipped:
        for info in zipped.infolist():
            name = info.filename.replace("\\", "/")
            dest = (root / name).resolve()
            if info.is_dir() or not dest.is_relative_to(root) or dest == root:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zipped.open(info) as src, dest.open("wb") as out:
                shutil.copyfileobj(src, out)
            count += 1
    return count
