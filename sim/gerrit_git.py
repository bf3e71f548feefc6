"""Real git repositories for the simulated Gerrit, driven through the `git` CLI.

Every call is an argument list; paths and messages (often non-ASCII, always
untrusted) travel as argv or stdin, never through a shell. Commits are built
with plumbing (hash-object, update-index, commit-tree) so bare repositories
need no work tree.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

ZERO_REV = "0" * 40


class GitError(Exception):
    """A git command failed; the message carries its stderr."""


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # Isolate from the user's and the system's git configuration, and from any
    # GIT_DIR a caller's environment may carry.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C.UTF-8"})
    if extra:
        env.update(extra)
    return env


def git(repo: Path, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
        check: bool = True) -> bytes:
    """Run `git -C repo ARGS...` and return its stdout (bytes)."""
    argv = ["git", "-c", "core.quotepath=false", "-C", str(repo), *args]
    proc = subprocess.run(argv, input=stdin, capture_output=True, env=_env(env), check=False)
    if check and proc.returncode != 0:
        raise GitError(f"git {args[0]} failed: {proc.stderr.decode('utf-8', 'replace').strip()}")
    return proc.stdout


def init_bare(path: Path, head: str = "master") -> None:
    """Create a bare repository whose HEAD names `head`."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "--bare", f"--initial-branch={head}")


def rev_parse(repo: Path, ref: str) -> str | None:
    """The commit a ref points at, or None if it does not exist."""
    out = git(repo, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False)
    return out.decode().strip() or None


def update_ref(repo: Path, ref: str, new: str, old: str | None = None) -> None:
    """Move `ref` to `new` (only if it still points at `old`, when given)."""
    git(repo, "update-ref", ref, new, *([old] if old else []))


def valid_branch(branch: str) -> bool:
    """Whether `branch` is a valid branch name for git."""
    argv = ["git", "check-ref-format", f"refs/heads/{branch}"]
    return subprocess.run(argv, env=_env(), capture_output=True, check=False).returncode == 0


def _ident(author: tuple[str, str], when: int) -> dict[str, str]:
    name, email = author
    date = f"{when} +0000"
    return {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_AUTHOR_DATE": date,
            "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email, "GIT_COMMITTER_DATE": date}


def commit(repo: Path, parents: list[str], files: dict[str, str], message: str,
           author: tuple[str, str], when: int) -> str:
    """A commit with `files` written over the first parent's tree; returns its id."""
    with tempfile.TemporaryDirectory(prefix="sim-gerrit-index-") as tmp:
        index = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if parents:
            git(repo, "read-tree", parents[0], env=index)
        entries = []
        for path, content in files.items():
            blob = git(repo, "hash-object", "-w", "--stdin", stdin=content.encode("utf-8"))
            entries.append(b"100644 " + blob.strip() + b"\t" + path.encode("utf-8") + b"\0")
        if entries:
            git(repo, "update-index", "-z", "--index-info", stdin=b"".join(entries), env=index)
        tree = git(repo, "write-tree", env=index).decode().strip()
    return commit_tree(repo, tree, parents, message, author, when)


def merge_tree(repo: Path, ours: str, theirs: str) -> str | None:
    """The tree of merging `theirs` into `ours`, or None on a conflict."""
    argv = ["git", "-C", str(repo), "merge-tree", "--write-tree", "--no-messages", ours, theirs]
    proc = subprocess.run(argv, env=_env(), capture_output=True, check=False)
    if proc.returncode == 1:
        return None
    if proc.returncode != 0:
        raise GitError(f"git merge-tree failed: {proc.stderr.decode('utf-8', 'replace').strip()}")
    return proc.stdout.decode().split("\n", 1)[0].strip()


def commit_tree(repo: Path, tree: str, parents: list[str], message: str,
                author: tuple[str, str], when: int) -> str:
    """A commit of an existing tree (also used for merge commits); returns its id."""
    parent_args = [arg for p in parents for arg in ("-p", p)]
    out = git(repo, "commit-tree", tree, *parent_args, stdin=message.encode("utf-8"),
              env=_ident(author, when))
    return out.decode().strip()


def is_ancestor(repo: Path, ancestor: str, descendant: str) -> bool:
    """Whether `ancestor` is reachable from `descendant`."""
    argv = ["git", "-C", str(repo), "merge-base", "--is-ancestor", ancestor, descendant]
    return subprocess.run(argv, env=_env(), capture_output=True, check=False).returncode == 0


def diff_files(repo: Path, old: str | None, new: str) -> list[dict[str, Any]]:
    """Gerrit's `files` entries for `old..new` (old None: against the empty tree)."""
    base = old or git(repo, "hash-object", "-t", "tree", "--stdin", stdin=b"").decode().strip()
    status = git(repo, "diff", "--name-status", "-z", "--no-renames", base, new).split(b"\0")
    numstat = git(repo, "diff", "--numstat", "-z", "--no-renames", base, new).split(b"\0")
    counts: dict[str, tuple[int, int]] = {}
    for item in numstat:
        if item:
            raw_ins, raw_dels, raw_path = item.split(b"\t", 2)
            counts[raw_path.decode("utf-8", "surrogateescape")] = (
                int(raw_ins) if raw_ins.isdigit() else 0,
                int(raw_dels) if raw_dels.isdigit() else 0)
    kinds = {"A": "ADDED", "M": "MODIFIED", "D": "DELETED", "T": "REWRITE"}
    files: list[dict[str, Any]] = []
    for code, path_b in zip(status[0::2], status[1::2], strict=False):
        if not code:
            continue
        path = path_b.decode("utf-8", "surrogateescape")
        ins, dels = counts.get(path, (0, 0))
        files.append({"file": path, "type": kinds.get(code.decode()[:1], "MODIFIED"),
                      "insertions": ins, "deletions": -dels})
    return files
