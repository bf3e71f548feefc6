"""Reporting over Gerrit's REST API (`gerrit.report: rest`), beside the SSH client.

The reporter needs two calls of a Gerrit client (`ci.report.ReviewClient`):
`review` posts a comment with its votes, `query` reads changes back (is the
change still open; did an earlier attempt's comment land). This client makes
them with HTTP basic auth and the account's HTTP password under `/a/`
(Documentation/rest-api.txt, "Authentication"):

- `POST /a/changes/{project}~{number}/revisions/{patchset}/review` with a
  ReviewInput (`message`, `labels`, `tag`; rest-api-changes.txt "Set Review").
  The change is named `project~number` and the revision by its legacy patch
  set number, both accepted by Gerrit's ChangeFinder and RevisionsCollection.
- `GET /a/changes/?q=...&o=MESSAGES&o=DETAILED_ACCOUNTS` pages with `S`
  while the last change carries `_more_changes` (rest-api-changes.txt "Query
  Changes"). Its ChangeInfo rows are translated into the shape of `gerrit
  query --format=JSON` rows (`number`, `status`, `comments[].reviewer.username`,
  `patchSets`), so the reporter reads both clients' answers alike.

Every JSON answer starts with Gerrit's `)]}'` line against cross-site script
inclusion (rest-api.txt, "Output Format"); errors are plain text with the
status code of the exception Gerrit threw (RestApiServlet): AuthException is
403 (`Applying label "Verified": -1 is restricted`), BadRequestException 400,
ResourceNotFoundException 404, ResourceConflictException 409 (`change is
closed`). They become the same GerritError kinds as the SSH client's, with
Gerrit's words in `stderr`, so ci.report_checks classifies both the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import requests
from requests.auth import HTTPBasicAuth

from ci.config import GerritConfig, GerritRestConfig
from ci.gerrit_errors import (
    GerritRefused,
    GerritRejected,
    GerritUnavailable,
    LabelRefused,
    label_refusal,
    truncate_message,
)

logger = logging.getLogger(__name__)

MAGIC_PREFIX = ")]}'"
PAGE = 500
# FileInfo.status (rest-api-changes.txt "FileInfo"; absent means modified) →
# the `type` of a `gerrit query --files` row (json.txt "file").
_FILE_TYPES = {"A": "ADDED", "D": "DELETED", "R": "RENAMED", "C": "COPIED", "W": "REWRITE"}


def parse_json(body: str) -> Any:
    """A REST answer's JSON, without Gerrit's `)]}'` first line."""
    text = body.lstrip("\ufeff")
    if text.startswith(MAGIC_PREFIX):
        text = text[len(MAGIC_PREFIX):]
    return json.loads(text)


def change_id(project: str, number: int) -> str:
    """`project~number`, the project URL-encoded as one path segment."""
    return f"{quote(project, safe='')}~{int(number)}"


def _timestamp(value: str | None) -> int | None:
    # "2013-02-21 11:16:36.775000000", UTC (rest-api.txt "Timestamp").
    if not value:
        return None
    try:
        return int(datetime.strptime(value[:19], "%Y-%m-%d %H:%M:%S")
                   .replace(tzinfo=UTC).timestamp())
    except ValueError:
        return None


def _account(info: dict[str, Any] | None) -> dict[str, Any]:
    info = info or {}
    return {k: info[k] for k in ("name", "email", "username") if k in info}


def _patch_set(sha: str, revision: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"number": revision.get("_number"), "revision": sha,
                           "ref": revision.get("ref", "")}
    files = revision.get("files")
    if files is not None:
        row["files"] = [{"file": name, "type": _FILE_TYPES.get(info.get("status", ""), "MODIFIED"),
                         "insertions": info.get("lines_inserted", 0),
                         "deletions": -int(info.get("lines_deleted", 0))}
                        for name, info in files.items()]
    return row


def ssh_row(change: dict[str, Any]) -> dict[str, Any]:
    """A ChangeInfo as the `gerrit query` row the reporter reads."""
    status = change.get("status", "")
    row: dict[str, Any] = {
        "project": change.get("project"), "branch": change.get("branch"),
        "id": change.get("change_id"), "number": change.get("_number"),
        "subject": change.get("subject"), "status": status, "open": status == "NEW",
    }
    if "messages" in change:
        row["comments"] = [{"timestamp": _timestamp(m.get("date")),
                            "reviewer": _account(m.get("author")),
                            "message": m.get("message", "")} for m in change["messages"]]
    revisions: dict[str, Any] = change.get("revisions") or {}
    sets = sorted((_patch_set(sha, rev) for sha, rev in revisions.items()),
                  key=lambda ps: ps["number"] or 0)
    if sets:
        row["patchSets"] = sets
    current = change.get("current_revision")
    if current and current in revisions:
        row["currentPatchSet"] = _patch_set(current, revisions[current])
    return row


class GerritRestClient:
    """`review` and `query` over REST; one HTTP session (kept-alive connections)."""

    def __init__(self, config: GerritConfig) -> None:
        if config.rest is None:
            raise ValueError("gerrit.rest is not configured")
        self.rest: GerritRestConfig = config.rest
        self.username = self.rest.username or config.username
        self.session = requests.Session()
        password = self.rest.password.resolve()
        if not password:
            raise GerritRefused("gerrit.rest.password resolves to nothing: set the account's "
                                "HTTP password (Gerrit: Settings → HTTP Credentials)")
        # Gerrit decodes Basic credentials as UTF-8 (ProjectBasicAuthFilter);
        # requests would send a str password as Latin-1.
        self.session.auth = HTTPBasicAuth(self.username.encode("utf-8"),
                                          password.encode("utf-8"))
        self.session.headers["Accept"] = "application/json"
        self.session.verify = (str(self.rest.ca_file) if self.rest.ca_file
                               else self.rest.verify_certificate)

    def close(self) -> None:
        self.session.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> str:
        url = self.rest.url + "a/" + path
        try:
            response = self.session.request(method, url, timeout=self.rest.timeout, **kwargs)
        except requests.RequestException as exc:
            # Includes an answer lost after Gerrit acted: the reporter asks
            # before it retries (ci.report.already_posted).
            raise GerritUnavailable(f"Gerrit REST {method} {path}: {type(exc).__name__}: "
                                    f"{exc}") from exc
        body = response.content.decode("utf-8", "replace")
        if response.ok:
            return body
        said = body.strip()
        where = f"Gerrit REST {method} {path} answered {response.status_code}"
        if response.status_code == 401:
            raise GerritRefused(f"{where}: the HTTP credentials of {self.username!r} were "
                                f"refused (gerrit.rest.password must be the account's HTTP "
                                f"password)", stderr=said)
        if response.status_code in (400, 403):
            refusal = label_refusal(said)
            if refusal is not None and method == "POST":
                raise LabelRefused(*refusal, stderr=said)
        if response.status_code == 429 or response.status_code >= 500:
            raise GerritUnavailable(f"{where}: {said[:500]}", stderr=said)
        raise GerritRejected(f"{where}: {said[:500]}", stderr=said)

    def review(self, project: str, change: int, patchset: int, *, message: str,
               labels: dict[str, int] | None = None, tag: str | None = None) -> None:
        """Post a comment and votes on CHANGE,PATCHSET (LabelRefused: nothing was posted)."""
        review: dict[str, Any] = {"message": truncate_message(message)}
        if labels:
            review["labels"] = dict(labels)
        if tag:
            review["tag"] = tag
        path = f"changes/{change_id(project, change)}/revisions/{int(patchset)}/review"
        self._request("POST", path, json=review)
        logger.info("review posted over REST on %s,%s (%s)", change, patchset, labels)

    def query(self, query: str, *, current_patch_set: bool = False, patch_sets: bool = False,
              files: bool = False, comments: bool = False) -> list[dict[str, Any]]:
        """Every change matching `query` as `gerrit query` rows, following `_more_changes`."""
        options = list(_options(current_patch_set=current_patch_set, patch_sets=patch_sets,
                                files=files, comments=comments))
        rows: list[dict[str, Any]] = []
        while True:
            params: list[tuple[str, str | int]] = [("q", query), ("n", PAGE), ("S", len(rows))]
            params += [("o", option) for option in options]
            page = parse_json(self._request("GET", "changes/", params=params))
            if not isinstance(page, list):
                raise GerritRejected(f"Gerrit REST query answered {type(page).__name__}, "
                                     f"not a list of changes")
            rows.extend(ssh_row(change) for change in page)
            if not page or not page[-1].get("_more_changes"):
                return rows


def _options(*, current_patch_set: bool, patch_sets: bool, files: bool,
             comments: bool) -> Iterable[str]:
    # ListChangesOption names (rest-api-changes.txt "Query Changes").
    if comments:
        yield from ("MESSAGES", "DETAILED_ACCOUNTS")
    if patch_sets:
        yield "ALL_REVISIONS"
        if files:
            yield "ALL_FILES"
    elif current_patch_set or files:
        yield "CURRENT_REVISION"
        if files:
            yield "CURRENT_FILES"
