"""What the CI should build for an event: small pure predicates and `jobs_for`.

Regexes come from the validated config. Branch regexes must match the whole
branch name (with `refs/heads/` stripped), so `master` never matches
`feature/master`; file regexes are searched anywhere in the path, so anchor
them (`^nova/virt/hyperv/`) to mean a directory.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Protocol

from ci.config import Config, GerritConfig, ProjectConfig
from listener.events import Account

# Gerrit's "magic" files: listed by `--files` and the REST API, never real paths.
MAGIC_FILES = frozenset({"/COMMIT_MSG", "/MERGE_LIST", "/PATCHSET_LEVEL"})

# "Patch Set 3: Code-Review+1 Verified-1" (the first line of every review message).
_PATCHSET_LINE = re.compile(r"\A\s*Patch Set \d+(:[^\n]*)?(\n|\Z)")
# Lines Gerrit adds around the reviewer's own text: votes and comment counts.
_NOISE_LINE = re.compile(
    r"^\s*(?:[A-Za-z][\w-]*[+-]\d+|\(\d+ (?:inline )?comments?\))\s*$"
)


class OnBranch(Protocol):
    """Anything naming a project and a branch: a ChangeInfo or a ChangeEvent."""

    @property
    def project(self) -> str: ...

    @property
    def branch(self) -> str: ...


@lru_cache(maxsize=256)
def _compiled(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(pattern, flags)


def branch_name(branch: str) -> str:
    """`refs/heads/stable/2024.1` → `stable/2024.1`."""
    return branch.removeprefix("refs/heads/")


def project_matches(project: ProjectConfig, name: str, branch: str) -> bool:
    """The project is this config entry and the branch matches one of its regexes."""
    if project.name != name:
        return False
    branch = branch_name(branch)
    return any(_compiled(b).fullmatch(branch) for b in project.branches)


def watched_projects(config: Config, name: str, branch: str) -> list[ProjectConfig]:
    """Every config entry that watches this project and branch."""
    return [p for p in config.projects if project_matches(p, name, branch)]


def needs_files(config: Config, name: str, branch: str) -> bool:
    """True if deciding needs the changed files (some watching entry has file regexes)."""
    return any(p.files for p in watched_projects(config, name, branch))


def files_match(patterns: Sequence[str], files: Iterable[str]) -> bool:
    """Any real changed file matches any regex; no regexes means the whole repository."""
    if not patterns:
        return True
    compiled = [_compiled(p) for p in patterns]
    return any(
        rx.search(path) for path in files if path not in MAGIC_FILES for rx in compiled
    )


def comment_body(comment: str) -> str:
    """The reviewer's own text: without the `Patch Set N: votes` header and vote lines."""
    text = comment.replace("\r\n", "\n")
    text = _PATCHSET_LINE.sub("", text, count=1)
    return "\n".join(line for line in text.split("\n") if not _NOISE_LINE.match(line)).strip()


def is_recheck(gerrit: GerritConfig, comment: str) -> bool:
    """The comment asks for a new run (`recheck_regex`, any line, any case)."""
    rx = _compiled(gerrit.recheck_regex, re.IGNORECASE | re.MULTILINE)
    return rx.search(comment_body(comment)) is not None


def is_ignored_author(gerrit: GerritConfig, author: Account) -> bool:
    """Our own account (so our vote never triggers us) or one listed in ignore_authors."""
    names = {gerrit.username, *gerrit.ignore_authors}
    return any(value and value in names for value in (author.username, author.name,
                                                      author.email))


def jobs_for(config: Config, event: OnBranch, files: Iterable[str] | None) -> list[str]:
    """The jobs to run for this patchset, in config order, each once.

    `files` may be None only when no watching entry has file regexes
    (see `needs_files`); an entry with regexes then matches nothing.
    """
    paths = list(files) if files is not None else []
    jobs: list[str] = []
    for project in watched_projects(config, event.project, event.branch):
        if project.files and files is None:
            continue
        if files_match(project.files, paths):
            jobs.extend(j for j in project.jobs if j not in jobs)
    return jobs
