"""The simulated Gerrit's model: projects, changes, patch sets, votes and events.

Projects are real bare git repositories under the state dir; each patch set is
a real commit stored under `refs/changes/NN/N/P`, so a job can fetch it. The
model is saved as JSON after every change and reloaded on start. Every
mutation emits the event a real Gerrit 3.x emits, in its wire shape, to the
subscribers (the `stream-events` sessions).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sim import gerrit_git as g
from sim.gerrit_labels import LABELS, LabelPolicy, LabelRejected, Range
from sim.gerrit_query import QueryError, parse_query

logger = logging.getLogger(__name__)

FIRST_CHANGE = 10001
_PROJECT_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$")
# Gson (Gerrit's serializer) escapes these even inside strings; they only ever
# occur inside JSON strings, so replacing them after dumps is exact.
_GSON_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                               "=": "\\u003d", "'": "\\u0027"})

Event = dict[str, Any]
# An event line: text, or bytes sent as they are (a replayed line need not be UTF-8).
Subscriber = Callable[[str | bytes], None]


class SimGerritError(Exception):
    """A request the simulated Gerrit refuses; the text is what Gerrit prints after `fatal: `."""


def wire_json(obj: object) -> str:
    """One compact JSON line as Gerrit writes it (UTF-8, Gson's HTML escapes)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).translate(_GSON_ESCAPES)


def change_ref(number: int, patchset: int) -> str:
    """`refs/changes/NN/N/P`, NN being the last two digits of N."""
    return f"refs/changes/{number % 100:02d}/{number}/{patchset}"


class GerritState:
    """Projects, changes and reviews of the simulated Gerrit. Thread-safe."""

    def __init__(self, root: Path, *, web_url: str = "https://review.example.org/",
                 grants: dict[str, dict[str, Range]] | None = None,
                 strict_labels: bool | None = None) -> None:
        self.root = root
        self.web_url = web_url if web_url.endswith("/") else web_url + "/"
        self._lock = threading.RLock()
        self._subscribers: list[Subscriber] = []
        self._file = root / "state.json"
        root.mkdir(parents=True, exist_ok=True)
        data: dict[str, Any] = {}
        if self._file.exists():
            data = json.loads(self._file.read_text(encoding="utf-8"))
        self._next = int(data.get("next_number", FIRST_CHANGE))
        self._seq = int(data.get("update_seq", 0))
        self._accounts: dict[str, dict[str, str]] = data.get("accounts", {})
        self._changes: dict[int, dict[str, Any]] = {int(k): v for k, v in
                                                     data.get("changes", {}).items()}
        self._reviews: list[dict[str, Any]] = data.get("reviews", [])
        # Who may vote what; kept in the state file, so a restart keeps the grants.
        self.labels = LabelPolicy.from_json(data.get("label_policy", {}))
        self.labels.grants.update(grants or {})
        if strict_labels is not None:
            self.labels.strict = strict_labels

    # -- events ------------------------------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(line)` for every event from now on; returns the unsubscribe function."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)
        return unsubscribe

    def subscriber_count(self) -> int:
        """How many event streams are listening now."""
        with self._lock:
            return len(self._subscribers)

    def emit_raw(self, line: str | bytes) -> None:
        """Send one line to every subscriber verbatim (replaying recorded events)."""
        with self._lock:
            for callback in list(self._subscribers):
                callback(line)

    def _emit(self, event: Event) -> None:
        event["eventCreatedOn"] = int(time.time())
        self.emit_raw(wire_json(event))

    # -- accounts and projects ---------------------------------------------------------------

    def account(self, name: str) -> dict[str, str]:
        """The account for a user name or a display name (created on first use)."""
        with self._lock:
            if name in self._accounts:
                return self._accounts[name]
            for acct in self._accounts.values():
                if acct["name"] == name:
                    return acct
            if re.fullmatch(r"[A-Za-z0-9._-]+", name):
                username = name
            else:
                username = "user-" + hashlib.sha1(name.encode()).hexdigest()[:8]  # noqa: S324
            acct = {"name": name, "email": f"{username}@example.org", "username": username}
            self._accounts[username] = acct
            return acct

    def grant(self, account: str, labels: dict[str, Range]) -> None:
        """Let `account` vote exactly these ranges (replacing its grants; {} for none)."""
        with self._lock:
            self.labels.grants[account] = dict(labels)
            self._save()

    def set_strict_labels(self, strict: bool) -> None:
        """Gerrit's `change.strictLabels`: refuse unknown labels and values, not drop them."""
        with self._lock:
            self.labels.strict = strict
            self._save()

    def repo_path(self, project: str) -> Path:
        """The bare repository of `project`."""
        if not _PROJECT_RE.match(project) or project.endswith(".git"):
            raise SimGerritError(f"invalid project name {project!r}")
        return self.root / "git" / f"{project}.git"

    def git_url(self, project: str) -> str:
        """A URL a job can `git fetch refs/changes/...` from."""
        return self.repo_path(project).resolve().as_uri()

    def _ensure_project(self, project: str, branch: str) -> Path:
        repo = self.repo_path(project)
        if not repo.exists():
            g.init_bare(repo)
            now = int(time.time())
            root = g.commit(repo, [], {"README.rst": f"{project}\n"}, "Initial empty repository\n",
                            ("Gerrit Code Review", "gerrit@example.org"), now)
            g.update_ref(repo, "refs/heads/master", root)
            self._emit({"projectName": project, "headName": "refs/heads/master",
                        "type": "project-created"})
        if not g.valid_branch(branch):
            raise SimGerritError(f"invalid branch name {branch!r}")
        if g.rev_parse(repo, f"refs/heads/{branch}") is None:
            g.update_ref(repo, f"refs/heads/{branch}", g.rev_parse(repo, "HEAD") or "")
        return repo

    # -- mutations ---------------------------------------------------------------------------

    def push(self, project: str, branch: str = "master",
             files: dict[str, str] | list[str] | None = None, subject: str = "Update",
             owner: str = "developer", change: int | None = None) -> dict[str, Any]:
        """Upload a new change (or a new patch set of `change`) on the branch tip.

        Returns {"change", "patchset", "ref", "revision"}.
        """
        if not subject.strip():
            raise SimGerritError("commit message subject is empty")
        with self._lock:
            now = int(time.time())
            uploader = self.account(owner)
            if change is not None:
                rec = self._change(change)
                if rec["status"] != "NEW":
                    raise SimGerritError(f"change {change} is closed")
                project, branch = rec["project"], rec["branch"]
            repo = self._ensure_project(project, branch)
            if change is None:
                number, self._next = self._next, self._next + 1
                change_id = "I" + hashlib.sha1(uuid.uuid4().bytes).hexdigest()  # noqa: S324
                rec = {"project": project, "branch": branch, "id": change_id, "number": number,
                       "subject": subject, "owner": uploader, "createdOn": now,
                       "lastUpdated": now, "status": "NEW", "patchSets": [], "messages": []}
            psnum = len(rec["patchSets"]) + 1
            if isinstance(files, dict):
                contents = dict(files)
            else:
                contents = {p: f"{subject}\npatch set {psnum} of change {rec['number']}\n"
                            for p in (files or ["README.rst"])}
            message = f"{subject}\n\nChange-Id: {rec['id']}\n"
            tip = g.rev_parse(repo, f"refs/heads/{branch}")
            parents = [tip] if tip else []
            rev = g.commit(repo, parents, contents, message,
                           (uploader["name"], uploader["email"]), now)
            ref = change_ref(rec["number"], psnum)
            g.update_ref(repo, ref, rev)
            changed = g.diff_files(repo, tip, rev)
            msg_lines = message.count("\n")
            ps = {"number": psnum, "revision": rev, "parents": parents, "ref": ref,
                  "uploader": uploader, "createdOn": now, "author": uploader, "kind": "REWORK",
                  "sizeInsertions": sum(int(f["insertions"]) for f in changed),
                  "sizeDeletions": sum(int(f["deletions"]) for f in changed),
                  "files": [{"file": "/COMMIT_MSG", "type": "ADDED", "insertions": msg_lines,
                             "deletions": 0}, *changed],
                  "approvals": {}}
            rec["patchSets"].append(ps)
            rec["subject"], rec["commitMessage"] = subject, message
            self._touch(rec, now)
            self._changes[rec["number"]] = rec
            self._save()
            self._emit({"submitter": uploader, "refUpdate": {
                "oldRev": g.ZERO_REV, "newRev": rev, "refName": ref, "project": project},
                "type": "ref-updated"})
            self._emit({"uploader": uploader, **self._attrs(rec, ps), "type": "patchset-created"})
            logger.info("sim gerrit: %s,%s uploaded to %s", rec["number"], psnum, project)
            return {"change": rec["number"], "patchset": psnum, "ref": ref, "revision": rev}

    def review(self, change: int, patchset: int, *, author: str, message: str = "",
               labels: dict[str, int] | None = None, tag: str | None = None,
               via_ssh: bool = True) -> dict[str, Any]:
        """Record a review (votes + message) and emit its comment-added; returns the record.

        A vote the author may not give raises LabelRejected before anything is
        recorded (see sim.gerrit_labels): the whole review fails, as in Gerrit.
        """
        with self._lock:
            rec = self._change(change)
            ps = self._patchset(rec, patchset)
            who = self.account(author)
            applied = self.labels.check(who["username"], labels or {})
            now = int(time.time())
            current = ps["approvals"].get(who["username"], {})
            old = {name: current.get(name, {}).get("value", 0) for name in self.labels.labels}
            self.labels.check_closed(rec["status"], old, applied)
            votes = ps["approvals"].setdefault(who["username"], {})
            summary = []
            for name in sorted(applied):
                value = applied[name]
                votes[name] = {"value": value, "grantedOn": now}
                if value != old[name]:
                    summary.append(f"{name}{value:+d}" if value else f"-{name}")
            head = f"Patch Set {patchset}:" + ("".join(" " + s for s in summary))
            comment = f"{head}\n\n{message}" if message else head
            rec["messages"].append({"timestamp": now, "reviewer": who, "message": comment,
                                    "patchset": patchset, "tag": tag})
            self._touch(rec, now)
            review = {"project": rec["project"], "change": change, "patchset": patchset,
                      "labels": applied, "message": message, "author": who["username"],
                      "tag": tag, "time": now}
            if via_ssh:
                self._reviews.append(review)
            self._save()
            approvals = []
            for name in self.labels.labels:
                entry = {"type": name, "description": name,
                         "value": str(votes.get(name, {}).get("value", 0))}
                if name in applied and applied[name] != old[name]:
                    entry["oldValue"] = str(old[name])
                approvals.append(entry)
            self._emit({"author": who, "approvals": approvals, "comment": comment,
                        **self._attrs(rec, ps), "type": "comment-added"})
            return review

    def comment(self, change: int, patchset: int, text: str, author: str = "reviewer") -> None:
        """A person's comment on a patch set (e.g. "recheck"): emits comment-added."""
        self.review(change, patchset, author=author, message=text, via_ssh=False)

    def abandon(self, change: int, *, by: str = "admin", reason: str = "") -> None:
        """Abandon an open change; emits change-abandoned."""
        with self._lock:
            rec = self._change(change)
            if rec["status"] != "NEW":
                raise SimGerritError(f"change {change} is {rec['status'].lower()}")
            rec["status"] = "ABANDONED"
            self._touch(rec, int(time.time()))
            self._save()
            self._emit({"abandoner": self.account(by), **self._attrs(rec, rec["patchSets"][-1]),
                        "reason": reason, "type": "change-abandoned"})

    def merge(self, change: int, *, by: str = "admin") -> str:
        """Submit the change: the branch advances by a real merge. Returns the new branch tip."""
        with self._lock:
            rec = self._change(change)
            if rec["status"] != "NEW":
                raise SimGerritError(f"change {change} is {rec['status'].lower()}")
            repo = self.repo_path(rec["project"])
            ps = rec["patchSets"][-1]
            ref = f"refs/heads/{rec['branch']}"
            tip = g.rev_parse(repo, ref)
            submitter = self.account(by)
            now = int(time.time())
            if tip is None or g.is_ancestor(repo, tip, ps["revision"]):
                new = ps["revision"]
            else:
                tree = g.merge_tree(repo, tip, ps["revision"])
                if tree is None:
                    raise SimGerritError(f"change {change} has a merge conflict")
                new = g.commit_tree(repo, tree, [tip, ps["revision"]],
                                    f"Merge \"{rec['subject']}\"\n",
                                    (submitter["name"], submitter["email"]), now)
            g.update_ref(repo, ref, new, tip)
            rec["status"] = "MERGED"
            self._touch(rec, now)
            self._save()
            self._emit({"submitter": submitter, "refUpdate": {
                "oldRev": tip or g.ZERO_REV, "newRev": new, "refName": ref,
                "project": rec["project"]}, "type": "ref-updated"})
            self._emit({"submitter": submitter, "newRev": new, **self._attrs(rec, ps),
                        "type": "change-merged"})
            return new

    # -- reading ---------------------------------------------------------------------------

    def reviews(self) -> list[dict[str, Any]]:
        """Every review posted through `gerrit review`, oldest first."""
        with self._lock:
            return json.loads(json.dumps(self._reviews))

    def find_patchset(self, target: str, *, project: str | None = None,
                      branch: str | None = None) -> tuple[int, int]:
        """Resolve `CHANGE,PS` or a commit id (4-40 hex) like Gerrit's PatchSetParser."""
        with self._lock:
            candidates: list[tuple[int, int]] = []
            if re.fullmatch(r"[1-9][0-9]*,[1-9][0-9]*", target):
                number, psnum = (int(x) for x in target.split(","))
                rec = self._changes.get(number)
                if rec and 0 < psnum <= len(rec["patchSets"]):
                    candidates.append((number, psnum))
            elif re.fullmatch(r"[0-9a-fA-F]{4,40}", target):
                for rec in self._changes.values():
                    candidates += [(rec["number"], ps["number"]) for ps in rec["patchSets"]
                                   if ps["revision"].startswith(target.lower())]
            else:
                raise SimGerritError(f'"{target}" is not a valid patch set')
            candidates = [(n, p) for n, p in candidates
                          if (project is None or self._changes[n]["project"] == project)
                          and (branch is None or self._changes[n]["branch"] == branch)]
            if not candidates:
                raise SimGerritError(f'"{target}" no such patch set')
            if len(candidates) > 1:
                raise SimGerritError(f'"{target}" matches multiple patch sets')
            return candidates[0]

    def query(self, text: str, *, start: int = 0, limit: int = 500,
              current_patch_set: bool = False, patch_sets: bool = False,
              all_approvals: bool = False, files: bool = False, comments: bool = False,
              commit_message: bool = False) -> tuple[list[dict[str, Any]], bool]:
        """The rows of `gerrit query` (newest update first) and whether more follow."""
        match, query_limit = parse_query(text)
        limit = min(limit, query_limit) if query_limit else limit
        with self._lock:
            found = sorted((r for r in self._changes.values() if match(r)),
                           key=lambda r: (r["lastUpdated"], r.get("updateSeq", 0)), reverse=True)
            page = found[start:start + limit]
            rows = []
            for rec in page:
                row = self._change_attr(rec, full=True)
                if not commit_message:
                    del row["commitMessage"]
                if comments:
                    row["comments"] = [{"timestamp": m["timestamp"], "reviewer": m["reviewer"],
                                        "message": m["message"]} for m in rec["messages"]]
                if current_patch_set:
                    row["currentPatchSet"] = self._ps_attr(rec["patchSets"][-1], True, files)
                if patch_sets or all_approvals:
                    row["patchSets"] = [self._ps_attr(ps, all_approvals, files)
                                        for ps in rec["patchSets"]]
                rows.append(row)
            return rows, len(found) > start + len(page)

    # -- internals ---------------------------------------------------------------------------

    def _touch(self, rec: dict[str, Any], now: int) -> None:
        # Timestamps are whole seconds; a sequence keeps "newest update first" exact.
        self._seq += 1
        rec["lastUpdated"], rec["updateSeq"] = now, self._seq

    def _change(self, number: int) -> dict[str, Any]:
        rec = self._changes.get(number)
        if rec is None:
            raise SimGerritError(f'"{number}" no such change')
        return rec

    def _patchset(self, rec: dict[str, Any], psnum: int) -> dict[str, Any]:
        if not 0 < psnum <= len(rec["patchSets"]):
            raise SimGerritError(f'"{rec["number"]},{psnum}" no such patch set')
        return rec["patchSets"][psnum - 1]

    def _change_attr(self, rec: dict[str, Any], *, full: bool = False) -> dict[str, Any]:
        attr: dict[str, Any] = {
            "project": rec["project"], "branch": rec["branch"], "id": rec["id"],
            "number": rec["number"], "subject": rec["subject"], "owner": rec["owner"],
            "url": f"{self.web_url}c/{rec['project']}/+/{rec['number']}",
            "commitMessage": rec["commitMessage"], "createdOn": rec["createdOn"]}
        if full:
            attr.update(lastUpdated=rec["lastUpdated"], open=rec["status"] == "NEW")
        attr["status"] = rec["status"]
        return attr

    def _ps_attr(self, ps: dict[str, Any], approvals: bool = False,
                 files: bool = False) -> dict[str, Any]:
        attr = {k: v for k, v in ps.items() if k not in ("files", "approvals")}
        if approvals:
            attr["approvals"] = [
                {"type": label, "description": label, "value": str(vote["value"]),
                 "grantedOn": vote["grantedOn"], "by": self._accounts[user]}
                for user, votes in ps["approvals"].items() for label, vote in votes.items()]
        if files:
            attr["files"] = ps["files"]
        return attr

    def _attrs(self, rec: dict[str, Any], ps: dict[str, Any]) -> Event:
        """The fields every change event carries, in Gerrit's order."""
        return {"patchSet": self._ps_attr(ps), "change": self._change_attr(rec),
                "project": rec["project"], "refName": f"refs/heads/{rec['branch']}",
                "changeKey": {"id": rec["id"]}}

    def _save(self) -> None:
        data = {"next_number": self._next, "update_seq": self._seq, "accounts": self._accounts,
                "changes": {str(k): v for k, v in self._changes.items()},
                "reviews": self._reviews, "label_policy": self.labels.to_json()}
        tmp = self._file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self._file)


__all__ = ["LABELS", "GerritState", "LabelRejected", "QueryError", "SimGerritError", "change_ref",
           "wire_json"]
