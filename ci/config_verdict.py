"""The configuration of baseline runs and of the baseline-aware verdict (re-exported by
ci.config): `baselines:` and `verdict:` in the YAML.

    baselines:
      every_hours: 6            # one run of each branch's jobs per period
      branches:
        - project: openstack/nova
          branch: unmaintained/2023.1
          jobs: [hyperv-tempest]  # default: the project's jobs
    verdict:
      baseline_max_age_hours: 24  # an older baseline explains nothing
      explained: zero            # all failures explained: Verified 0 (or no-vote)
      signatures: signatures.yaml  # known failures (ci/signatures.py)
      scan_bytes: 1048576        # of each log file a signature reads (its end)
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Literal, Protocol

from pydantic import Field, PrivateAttr

from ci.config_base import _Strict
from ci.signatures import SCAN_BYTES, Signature, load_signatures


class ProjectLike(Protocol):
    """What the baseline check reads of a configured project (ci.config.ProjectConfig)."""

    @property
    def name(self) -> str: ...
    @property
    def branches(self) -> list[str]: ...
    @property
    def jobs(self) -> list[str]: ...


class BaselineBranch(_Strict):
    """A branch whose tip is built on the schedule, as its changes' baseline."""

    project: str
    branch: str
    jobs: list[str] | None = None  # None: every job of the project


class BaselinesConfig(_Strict):
    every_hours: float = Field(6, gt=0, le=24 * 7)
    branches: list[BaselineBranch] = Field(default_factory=list)

    @property
    def every_seconds(self) -> float:
        return self.every_hours * 3600


class VerdictConfig(_Strict):
    baseline_max_age_hours: float = Field(24, gt=0)
    # When every failure of a failed build is explained: Verified 0 with the
    # comment, or the comment with no vote at all.
    explained: Literal["zero", "no-vote"] = "zero"
    signatures: Path | None = None
    scan_bytes: int = Field(SCAN_BYTES, ge=1024, le=64 * 1024 * 1024)
    # The signature file's entries, read and validated with the configuration.
    _known: tuple[Signature, ...] = PrivateAttr(default=())

    @property
    def known_failures(self) -> tuple[Signature, ...]:
        return self._known

    def with_signatures(self, signatures: tuple[Signature, ...]) -> VerdictConfig:
        """A copy holding `signatures` (the loaded file)."""
        copy = self.model_copy()
        copy._known = signatures
        return copy


def check_baselines(baselines: BaselinesConfig, projects: Sequence[ProjectLike],
                    jobs: Collection[str]) -> None:
    """Each baseline branch is a configured project's, on a branch it watches, with its jobs:
    a baseline of anything else would explain no change's failure."""
    by_name = {p.name: p for p in projects}
    for index, target in enumerate(baselines.branches):
        where = f"baselines.branches.{index}"
        project = by_name.get(target.project)
        if project is None:
            raise ValueError(f"{where}.project: {target.project!r} is not a configured project")
        if not any(re.fullmatch(pattern, target.branch) for pattern in project.branches):
            raise ValueError(f"{where}.branch: {target.branch!r} is not a branch "
                             f"{target.project} watches ({', '.join(project.branches)})")
        for job in target.jobs or ():
            if job not in jobs:
                raise ValueError(f"{where}.jobs: unknown job {job!r}")
            if job not in project.jobs:
                raise ValueError(f"{where}.jobs: {job!r} is not a job of {target.project}")


def load_verdict_signatures(verdict: VerdictConfig, base_dir: Path | None) -> VerdictConfig:
    """`verdict` with its signature file read and validated (relative to the config file)."""
    if verdict.signatures is None:
        return verdict
    path = verdict.signatures
    if not path.is_absolute() and base_dir is not None:
        path = (base_dir / path).resolve()
    loaded = verdict.model_copy(update={"signatures": path})
    return loaded.with_signatures(load_signatures(path))
