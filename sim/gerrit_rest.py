"""The simulated Gerrit's REST API: Set Review and Query Changes, on a port of its own.

It serves the same `GerritState` as the SSH side, so a vote posted here is
seen by `gerrit query` there and goes through the same label rules
(sim.gerrit_labels). What it models, and refuses as Gerrit does:

- Only `/a/...` is authenticated: HTTP basic auth against each account's HTTP
  password; a wrong or missing one is `401 Unauthorized` with Gerrit's
  `WWW-Authenticate: Basic realm="Gerrit Code Review"` (Documentation/
  rest-api.txt "Authentication"; ProjectBasicAuthFilter). A review posted
  without `/a/` is anonymous: `403 Authentication required` (RestApiServlet).
- `POST /a/changes/{id}/revisions/{rev}/review`: the change as a number,
  `project~number` or `project~branch~Change-Id` (ChangeFinder), the revision
  as a patch set number, a (4..40 hex) commit or `current`
  (RevisionsCollection); anything else is `404 Not found: <id>`. The body
  must be `Content-Type: application/json` (RestApiServlet.parseRequest:
  `Expected Content-Type: application/json`) and a JSON object.
- Refusals keep PostReview's words and RestApiServlet's codes: 403 for a
  restricted vote, 400 for an unknown label or value under strictLabels, 409
  for a vote on a closed change.
- Every JSON answer starts with `)]}'` and a newline (rest-api.txt, "Output
  Format"); errors are `text/plain`.
- `GET /a/changes/?q=&o=&n=&S=`: ChangeInfo entities, newest update first,
  the last one carrying `_more_changes: true` when the limit cut the list
  (rest-api-changes.txt "Query Changes"); an `o` that is not a
  ListChangesOption is `400 "X" is not a valid value for "-o"`.

`drop_next_review_response()` makes the next review land and then closes the
connection without an answer: the lost acknowledgement a reporter must not
answer with a second vote.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from sim.gerrit_labels import LabelRejected
from sim.gerrit_query import QueryError
from sim.gerrit_state import GerritState, SimGerritError

logger = logging.getLogger(__name__)

MAGIC_PREFIX = ")]}'\n"
REALM = 'Basic realm="Gerrit Code Review"'
# ListChangesOption (java/com/google/gerrit/extensions/client/ListChangesOption.java):
# every name Gerrit accepts; the ones marked below change what is answered here.
LIST_CHANGES_OPTIONS = frozenset({
    "LABELS", "DETAILED_LABELS", "CURRENT_REVISION", "ALL_REVISIONS", "CURRENT_COMMIT",
    "ALL_COMMITS", "CURRENT_FILES", "ALL_FILES", "DETAILED_ACCOUNTS", "MESSAGES",
    "CURRENT_ACTIONS", "REVIEWED", "DRAFT_COMMENTS", "DOWNLOAD_COMMANDS", "WEB_LINKS",
    "CHECK", "CHANGE_ACTIONS", "COMMIT_FOOTERS", "PUSH_CERTIFICATES", "REVIEWER_UPDATES",
    "SUBMITTABLE", "TRACKING_IDS", "SKIP_MERGEABLE", "SKIP_DIFFSTAT", "SUBMIT_REQUIREMENTS",
    "CUSTOM_KEYED_VALUES", "STAR", "SUBMIT_RECORDS", "PARENTS",
})
# `gerrit query --files` types back to FileInfo.status (absent: modified).
_FILE_STATUS = {"ADDED": "A", "DELETED": "D", "RENAMED": "R", "COPIED": "C", "REWRITE": "W"}


class _Answer(Exception):
    """An error answer: status and Gerrit's text."""

    def __init__(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or {}


def _gerrit_time(epoch: int | None) -> str:
    # rest-api.txt "Timestamp": UTC, `yyyy-mm-dd hh:mm:ss.fffffffff`.
    return time.strftime("%Y-%m-%d %H:%M:%S.000000000", time.gmtime(epoch or 0))


class SimGerritRest:
    """The REST side of a simulated Gerrit; `start()`, then `url` is its base URL."""

    def __init__(self, state: GerritState, passwords: dict[str, str], *,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = state
        self.passwords = dict(passwords)
        self._drop_next_review = threading.Event()
        self._account_ids: dict[str, int] = {}
        handler = type("Handler", (_Handler,), {"sim": self})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def start(self) -> SimGerritRest:
        self._thread = threading.Thread(target=self.server.serve_forever, name="sim-gerrit-rest",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> SimGerritRest:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def drop_next_review_response(self) -> None:
        """The next review is recorded, then the connection closes unanswered."""
        self._drop_next_review.set()

    def take_drop(self) -> bool:
        if self._drop_next_review.is_set():
            self._drop_next_review.clear()
            return True
        return False

    # -- the two endpoints ----------------------------------------------------------------

    def account_id(self, username: str) -> int:
        return self._account_ids.setdefault(username, 1000000 + len(self._account_ids))

    def authenticate(self, header: str | None) -> str:
        """The account of a Basic `Authorization` header, or a 401."""
        denied = _Answer(HTTPStatus.UNAUTHORIZED, "Unauthorized", {"WWW-Authenticate": REALM})
        if not header or not header.startswith("Basic "):
            raise denied
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise denied from None
        expected = self.passwords.get(user)
        if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
            raise denied
        return user

    def review(self, user: str, change: str, revision: str, body: dict[str, Any]) -> dict[str, Any]:
        number, psnum = self._resolve(change, revision)
        labels = body.get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(v, int) for v in labels.values()):
            raise _Answer(HTTPStatus.BAD_REQUEST, "labels must map label names to integers")
        message = body.get("message") or ""
        tag = body.get("tag")
        try:
            self.state.review(number, psnum, author=user, message=str(message),
                              labels={str(k): int(v) for k, v in labels.items()},
                              tag=str(tag) if tag is not None else None)
        except LabelRejected as exc:
            raise _Answer(exc.http_status, str(exc)) from None
        return {"labels": labels}

    def _resolve(self, change: str, revision: str) -> tuple[int, int]:
        number = self._change_number(change)
        rows, _ = self.state.query(f"change:{number}", patch_sets=True)
        if not rows:
            raise _Answer(HTTPStatus.NOT_FOUND, f"Not found: {change}")
        sets = rows[0].get("patchSets", [])
        if revision == "current":
            return number, int(sets[-1]["number"])
        if re.fullmatch(r"[1-9][0-9]*", revision) and int(revision) <= len(sets):
            return number, int(revision)
        if re.fullmatch(r"[0-9a-f]{4,40}", revision):
            found = [int(ps["number"]) for ps in sets if ps["revision"].startswith(revision)]
            if len(found) == 1:
                return number, found[0]
        raise _Answer(HTTPStatus.NOT_FOUND, f"Not found: {revision}")

    def _change_number(self, change: str) -> int:
        parts = change.split("~")
        rows: list[dict[str, Any]] = []
        if len(parts) == 1 and re.fullmatch(r"[1-9][0-9]*", change):
            rows, _ = self.state.query(f"change:{change}")
        elif len(parts) == 2 and re.fullmatch(r"[1-9][0-9]*", parts[1]):
            rows, _ = self.state.query(f"change:{parts[1]}")
            rows = [r for r in rows if r["project"] == parts[0]]
        elif len(parts) == 3 and re.fullmatch(r"I[0-9a-f]{40}", parts[2]):
            rows, _ = self.state.query(f"change:{parts[2]}")
            rows = [r for r in rows if r["project"] == parts[0] and r["branch"] == parts[1]]
        if len(rows) != 1:
            raise _Answer(HTTPStatus.NOT_FOUND, f"Not found: {change}")
        return int(rows[0]["number"])

    def query(self, params: dict[str, list[str]]) -> list[dict[str, Any]]:
        options = set(params.get("o", []))
        for option in sorted(options - LIST_CHANGES_OPTIONS):
            raise _Answer(HTTPStatus.BAD_REQUEST, f'"{option}" is not a valid value for "-o"')
        text = (params.get("q") or ["status:open"])[-1]
        limit = _number(params, "n", 500)
        start = _number(params, "S", 0) or _number(params, "start", 0)
        every = "ALL_REVISIONS" in options
        files = "ALL_FILES" in options or "CURRENT_FILES" in options
        try:
            rows, more = self.state.query(
                text, start=start, limit=limit, comments="MESSAGES" in options,
                patch_sets=every or "CURRENT_REVISION" in options, files=files)
        except (QueryError, SimGerritError) as exc:
            raise _Answer(HTTPStatus.BAD_REQUEST, str(exc)) from None
        changes = [self._change_info(row, options) for row in rows]
        if more and changes:
            changes[-1]["_more_changes"] = True
        return changes

    def _change_info(self, row: dict[str, Any], options: set[str]) -> dict[str, Any]:
        info: dict[str, Any] = {
            "id": f"{row['project']}~{row['number']}", "project": row["project"],
            "branch": row["branch"], "change_id": row["id"], "subject": row["subject"],
            "status": row["status"], "_number": row["number"],
            "updated": _gerrit_time(row.get("lastUpdated")),
            "owner": self._account_info(row["owner"], options)}
        if "MESSAGES" in options:
            info["messages"] = [{"author": self._account_info(m["reviewer"], options),
                                 "date": _gerrit_time(m["timestamp"]), "message": m["message"]}
                                for m in row.get("comments", [])]
        sets = row.get("patchSets", [])
        if sets:
            shown = sets if "ALL_REVISIONS" in options else sets[-1:]
            info["current_revision"] = sets[-1]["revision"]
            info["revisions"] = {ps["revision"]: self._revision(ps) for ps in shown}
        return info

    def _account_info(self, account: dict[str, Any], options: set[str]) -> dict[str, Any]:
        username = account.get("username", "")
        info: dict[str, Any] = {"_account_id": self.account_id(username)}
        if "DETAILED_ACCOUNTS" in options:
            info.update({k: account[k] for k in ("name", "email", "username") if k in account})
        return info

    @staticmethod
    def _revision(ps: dict[str, Any]) -> dict[str, Any]:
        revision: dict[str, Any] = {"_number": ps["number"], "ref": ps["ref"]}
        if "files" in ps:
            revision["files"] = {
                f["file"]: {k: v for k, v in (("status", _FILE_STATUS.get(f.get("type", ""))),
                                              ("lines_inserted", f.get("insertions", 0)),
                                              ("lines_deleted", -int(f.get("deletions", 0))))
                            if v is not None}
                for f in ps["files"]}
        return revision


def _number(params: dict[str, list[str]], name: str, default: int) -> int:
    values = params.get(name)
    if not values:
        return default
    if not values[-1].isdigit():
        raise _Answer(HTTPStatus.BAD_REQUEST, f'"{values[-1]}" is not a valid value for "-{name}"')
    return int(values[-1])


_REVIEW_PATH = re.compile(r"^/(a/)?changes/([^/]+)/revisions/([^/]+)/review$")


class _Handler(BaseHTTPRequestHandler):
    sim: SimGerritRest
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("sim gerrit rest: " + format, *args)

    def do_GET(self) -> None:
        self._serve(self._get)

    def do_POST(self) -> None:
        self._serve(self._post)

    def _serve(self, handle: Any) -> None:
        try:
            status, payload = handle()
        except _Answer as answer:
            self._send(answer.status, answer.text + "\n", "text/plain; charset=UTF-8",
                       answer.headers)
            return
        if payload is None:  # the dropped acknowledgement: no answer at all
            self.close_connection = True
            self.connection.close()
            return
        self._send(status, MAGIC_PREFIX + json.dumps(payload, ensure_ascii=False),
                   "application/json; charset=UTF-8")

    def _send(self, status: int, text: str, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        body = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _get(self) -> tuple[int, Any]:
        url = urlsplit(self.path)
        if url.path not in ("/a/changes/", "/changes/"):
            raise _Answer(HTTPStatus.NOT_FOUND, "Not Found")
        if url.path.startswith("/a/"):
            self.sim.authenticate(self.headers.get("Authorization"))
        return HTTPStatus.OK, self.sim.query(parse_qs(url.query))

    def _post(self) -> tuple[int, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        match = _REVIEW_PATH.match(urlsplit(self.path).path)
        if match is None:
            raise _Answer(HTTPStatus.NOT_FOUND, "Not Found")
        if not match[1]:
            raise _Answer(HTTPStatus.FORBIDDEN, "Authentication required")
        user = self.sim.authenticate(self.headers.get("Authorization"))
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type != "application/json":
            raise _Answer(HTTPStatus.BAD_REQUEST, "Expected Content-Type: application/json")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise _Answer(HTTPStatus.BAD_REQUEST, "Invalid JSON") from None
        if not isinstance(body, dict):
            raise _Answer(HTTPStatus.BAD_REQUEST, "Expected JSON object")
        result = self.sim.review(user, unquote(match[2]), unquote(match[3]), body)
        if self.sim.take_drop():
            return HTTPStatus.OK, None
        return HTTPStatus.OK, result
