"""Preparing a change for test: fetch its ref and merge it onto the branch tip.

This is what Zuul's merger does: the code under test is the change *as it
would land* (branch tip + change, merged with `--no-ff`), not the change on
its possibly stale parent. A conflict is the change's situation, not the
CI's fault, so it surfaces as `MergeConflict` (reported without a vote).

Each worker keeps one bare git cache per project (`cache_dir/<project>.git`)
so a fetch only transfers what is new; a build merges in its own clone of
that cache and ships the result to the nodes as a `git bundle`.

Every git call is an argument list. Branch, ref and file names come from
Gerrit (untrusted, often non-ASCII): refs are validated before use, paths
are read NUL-separated with `core.quotepath=false`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ci.changes import ChangeInfo
from ci.errors import ControlFlow
from runners.base import InfraError, OutputSink

logger = logging.getLogger(__name__)

GIT_TIMEOUT = 1800.0  # a first fetch of nova from a slow mirror takes minutes
MERGER_NAME = "hyperv-ci"
MERGER_EMAIL = "hyperv-ci@localhost"
BUNDLE_NAME = "change.bundle"
# Gerrit's patchset refs: refs/changes/<last two digits>/<change>/<patchset>.
_CHANGE_REF = re.compile(r"refs/changes/(\d\d)/(\d+)/(\d+)")
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


class MergeError(InfraError):
    """Git could not fetch or merge for a reason that is not a conflict: the CI's fault."""


class MergeConflict(ControlFlow):
    """The change does not merge onto its branch tip; `files` are the conflicting paths.

    Not an error of ours but the build's result: reported without a vote.
    """

    def __init__(self, change: ChangeInfo, files: Sequence[str]) -> None:
        self.files = list(files)
        listed = ", ".join(self.files) if self.files else "(no file reported)"
        super().__init__(
            f"change {change.number},{change.patchset} does not merge onto "
            f"{change.branch}: conflicts in {listed}"
        )


@dataclass(frozen=True)
class PreparedChange:
    """The merged tree, ready to ship to the nodes."""

    project: str
    branch: str
    ref: str
    base_commit: str  # the branch tip the change was merged onto
    change_commit: str  # the patchset's own commit
    merge_commit: str  # what gets tested
    checkout: Path  # a working tree at merge_commit, on the worker
    bundle: Path  # `git bundle` holding refs/heads/<branch> (= merge_commit) and HEAD


def _git_env() -> dict[str, str]:
    # Never prompt for credentials (a hung fetch would hold the build), and
    # ignore the host's git config so every worker merges the same way.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "LC_ALL": "C.UTF-8",
    })
    return env


def _subcommand(args: Sequence[str]) -> str:
    """The git subcommand in `args`, past any `-C DIR` / `-c KEY=VALUE` options."""
    items = iter(args)
    for arg in items:
        if arg in ("-C", "-c"):
            next(items, None)
        else:
            return arg
    return "?"


def _run_git(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    on_output: OutputSink | None = None,
    timeout: float = GIT_TIMEOUT,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run git, streaming its combined output to `on_output`; stdout is also returned."""
    argv = ["git", "-c", "core.quotepath=false", *args]
    if on_output:
        on_output("$ " + " ".join(argv) + "\n")
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=_git_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise MergeError(f"cannot run git: {exc}") from exc
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    err_chunks: list[bytes] = []

    def _pump_stderr(stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            err_chunks.append(line)
            if on_output:
                on_output(line.decode("utf-8", errors="replace"))

    pump = threading.Thread(target=_pump_stderr, args=(proc.stderr,), daemon=True)
    pump.start()
    assert proc.stdout is not None and proc.stderr is not None
    try:
        out = proc.stdout.read()
        code = proc.wait()
        pump.join()
    finally:
        timer.cancel()
        proc.stdout.close()
        proc.stderr.close()
    if on_output and out:
        on_output(out.decode("utf-8", errors="replace"))
    err = b"".join(err_chunks)
    if code < 0:
        raise MergeError(f"git {_subcommand(args)} killed after {timeout:.0f}s")
    if check and code != 0:
        message = err.decode("utf-8", errors="replace").strip().splitlines()
        raise MergeError(
            f"git {_subcommand(args)} failed (exit {code}): {' / '.join(message[-3:])}")
    return subprocess.CompletedProcess(argv, code, out, err)


def validate_change(change: ChangeInfo) -> None:
    """Refuse a branch or ref that could be read as an option or is not a ref git accepts."""
    if not change.branch_tip and not _CHANGE_REF.fullmatch(change.ref):
        raise MergeError(f"not a Gerrit change ref: {change.ref!r}")
    check = subprocess.run(["git", "check-ref-format", "--branch", change.branch],
                           env=_git_env(), capture_output=True, check=False)
    if check.returncode != 0 or change.branch.startswith("-"):
        raise MergeError(f"not a valid branch name: {change.branch!r}")
    if change.revision and not _SHA.fullmatch(change.revision):
        raise MergeError(f"not a commit id: {change.revision!r}")


def expand_git_url(git_url: str, project: str) -> str:
    """`GerritConfig.git_url` with `{project}` replaced (a plain replace: no format syntax)."""
    return git_url.replace("{project}", project)


def _cache_name(project: str) -> str:
    # One flat directory per project; '/' and anything odd become '_'.
    return re.sub(r"[^A-Za-z0-9_.-]", "_", project).strip(".") + ".git"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (two builds of one project on one worker take turns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update_cache(git_url: str, change: ChangeInfo, cache_dir: Path,
                 on_output: OutputSink | None = None) -> Path:
    """Fetch the branch and the change's ref into the project's bare cache; returns its path."""
    validate_change(change)
    url = expand_git_url(git_url, change.project)
    cache = cache_dir / _cache_name(change.project)
    with _locked(cache_dir / (cache.name + ".lock")):
        if not (cache / "HEAD").is_file():
            shutil.rmtree(cache, ignore_errors=True)
            _run_git(["init", "--quiet", "--bare", str(cache)], on_output=on_output)
        _run_git(
            ["-C", str(cache), "fetch", "--no-tags", "--force", "--end-of-options", url,
             # A branch tip's ref is the branch: one refspec (git refuses a ref twice).
             *dict.fromkeys([f"+refs/heads/{change.branch}:refs/heads/{change.branch}",
                             f"+{change.ref}:{change.ref}"])],
            on_output=on_output,
        )
    return cache


def _bundle_tip(change: ChangeInfo, tree: Path, bundle: Path,
                on_output: OutputSink | None) -> PreparedChange:
    """A baseline build's tree: the branch tip itself, nothing merged onto it."""
    tip = _rev(tree, "HEAD")
    _run_git(["-C", str(tree), "bundle", "create", "--quiet", str(bundle),
              f"refs/heads/{change.branch}", "HEAD"], on_output=on_output)
    if on_output:
        on_output(f"testing the tip of {change.branch} ({tip[:12]}) as it is\n")
    return PreparedChange(project=change.project, branch=change.branch, ref=change.ref,
                          base_commit=tip, change_commit=tip, merge_commit=tip, checkout=tree,
                          bundle=bundle)


def _rev(repo: Path, name: str) -> str:
    out = _run_git(["-C", str(repo), "rev-parse", "--verify", "--end-of-options",
                    f"{name}^{{commit}}"])
    return out.stdout.decode().strip()


def _conflicting_files(tree: Path) -> list[str]:
    out = _run_git(["-C", str(tree), "diff", "--name-only", "-z", "--diff-filter=U"], check=False)
    names = [p.decode("utf-8", errors="replace") for p in out.stdout.split(b"\0") if p]
    return sorted(set(names))


def prepare_change(
    git_url: str,
    change: ChangeInfo,
    workdir: Path,
    on_output: OutputSink | None = None,
    *,
    cache_dir: Path | None = None,
) -> PreparedChange:
    """Merge `change` onto its branch tip in `workdir/src` and bundle the result.

    `git_url` may hold `{project}` (as in the config). `cache_dir` keeps the
    per-project caches between builds (default: `workdir/cache`). Raises
    `MergeConflict` when the change does not merge, `MergeError` (an
    InfraError) when git cannot fetch or run.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    cache = update_cache(git_url, change, cache_dir or workdir / "cache", on_output)
    tree = workdir / "src"
    shutil.rmtree(tree, ignore_errors=True)
    bundle = workdir / BUNDLE_NAME
    bundle.unlink(missing_ok=True)
    # A local clone hard-links the objects: cheap, and independent of the cache afterwards.
    _run_git(["clone", "--quiet", "--branch", change.branch, "--end-of-options", str(cache),
              str(tree)], on_output=on_output)
    if change.branch_tip:
        return _bundle_tip(change, tree, bundle, on_output)
    _run_git(["-C", str(tree), "fetch", "--quiet", "--no-tags", "--end-of-options", str(cache),
              f"+{change.ref}:refs/hyperv-ci/change"], on_output=on_output)
    base = _rev(tree, "HEAD")
    head = _rev(tree, "refs/hyperv-ci/change")
    if change.revision and head != change.revision:
        raise MergeError(f"{change.ref} is {head}, not the event's revision {change.revision}")
    message = f"Merge change {change.number},{change.patchset} into {change.branch}"
    merge = _run_git(
        ["-C", str(tree), "-c", f"user.name={MERGER_NAME}", "-c", f"user.email={MERGER_EMAIL}",
         "merge", "--no-ff", "--no-edit", "-m", message, "refs/hyperv-ci/change"],
        on_output=on_output, check=False,
    )
    if merge.returncode != 0:
        files = _conflicting_files(tree)
        _run_git(["-C", str(tree), "merge", "--abort"], check=False)
        if not files:
            text = merge.stderr.decode("utf-8", errors="replace").strip()
            raise MergeError(f"git merge failed (exit {merge.returncode}): {text[-500:]}")
        logger.info("change %s,%s conflicts in %d file(s)", change.number, change.patchset,
                    len(files))
        raise MergeConflict(change, files)
    merged = _rev(tree, "HEAD")
    _run_git(["-C", str(tree), "bundle", "create", "--quiet", str(bundle),
              f"refs/heads/{change.branch}", "HEAD"], on_output=on_output)
    if on_output:
        on_output(f"merged {change.ref} ({head[:12]}) onto {change.branch} ({base[:12]}) "
                  f"as {merged[:12]}\n")
    return PreparedChange(project=change.project, branch=change.branch, ref=change.ref,
                          base_commit=base, change_commit=head, merge_commit=merged,
                          checkout=tree, bundle=bundle)
