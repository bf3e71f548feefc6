"""The published log tree under /logs/: listings and files, read-only.

Logs hold output of untrusted changes, so nothing here is ever served as
HTML from our origin: text is text/plain (utf-8), with nosniff and a
sandbox CSP. Paths are resolved and must stay inside `logs.dir`.
"""

from __future__ import annotations

import gzip
import mimetypes
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from flask import Blueprint, Response, abort, redirect, render_template, request, send_file, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from ci.models import Build
from dashboard.context import config, db
from runners.results import RESULTS_FILE

bp = Blueprint("logs", __name__, url_prefix="/logs")

CHUNK = 64 * 1024
TEXT = "text/plain; charset=utf-8"
# Types a browser may render as they are; everything else is text or a download.
INLINE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/svg+xml", "application/pdf"}
TEXT_TYPES = {"application/json", "application/xml", "application/x-sh",
              "application/javascript", "application/x-yaml", "application/yaml"}
LOG_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox; default-src 'none'",
}


@dataclass(frozen=True)
class Entry:
    """One line of a directory listing."""

    name: str
    href: str
    is_dir: bool
    size: int
    modified: str


def _resolve(subpath: str) -> Path:
    """The file or directory for a URL path, or 404 if it is missing or outside the tree."""
    root = config().logs.dir.resolve()
    if "\x00" in subpath:
        abort(404)
    target = (root / subpath).resolve()
    # resolve() follows symlinks and "..": whatever it lands on must be under root.
    if target != root and not target.is_relative_to(root):
        abort(404)
    if not target.exists():
        abort(404)
    return target


def _content_type(name: str) -> tuple[str, bool]:
    """(type, is_text) for a file name; unknown types are treated as text (logs)."""
    guessed, _ = mimetypes.guess_type(name, strict=False)
    if guessed is None or guessed.startswith("text/") or guessed in TEXT_TYPES:
        return TEXT, True
    if guessed in INLINE_TYPES and guessed != "image/svg+xml":
        return guessed, False
    return "application/octet-stream", False


@bp.get("/", defaults={"subpath": ""})
@bp.get("/<path:subpath>")
def serve(subpath: str) -> ResponseReturnValue:
    """A directory listing, or a file (a .gz one readable in the browser)."""
    target = _resolve(subpath)
    if target.is_dir():
        if subpath and not subpath.endswith("/"):
            # Relative links in the listing need the trailing slash.
            return redirect(request.path + "/", code=308)
        return _listing(subpath, target)
    if not stat.S_ISREG(target.stat().st_mode):
        abort(404)
    if target.suffix == ".gz":
        return _gzip_file(target)
    content_type, is_text = _content_type(target.name)
    response = send_file(target, mimetype=content_type, conditional=True,
                         as_attachment=content_type == "application/octet-stream")
    if is_text:
        response.headers["Content-Type"] = TEXT
    response.headers.update(LOG_HEADERS)
    return response


def _gzip_file(path: Path) -> Response:
    """Send the stored bytes with Content-Encoding: gzip when the client takes it, else inflate."""
    inner = path.name[: -len(".gz")]
    content_type, _ = _content_type(inner)
    if content_type == "application/octet-stream":
        response = send_file(path, mimetype="application/gzip", as_attachment=True)
    elif "gzip" in request.headers.get("Accept-Encoding", ""):
        response = send_file(path, mimetype=content_type, conditional=True)
        response.headers["Content-Encoding"] = "gzip"
        response.headers["Content-Type"] = content_type
    else:
        response = Response(_inflate(path), content_type=content_type)
    response.headers["Vary"] = "Accept-Encoding"
    response.headers.update(LOG_HEADERS)
    return response


def _inflate(path: Path) -> Iterator[bytes]:
    with gzip.open(path, "rb") as stream:
        while chunk := stream.read(CHUNK):
            yield chunk


def _listing(subpath: str, directory: Path) -> str:
    entries = []
    for child in directory.iterdir():
        try:
            info = child.stat()
        except OSError:
            continue  # a dangling symlink: nothing to show
        is_dir = stat.S_ISDIR(info.st_mode)
        name = child.name + ("/" if is_dir else "")
        entries.append(Entry(
            name=name,
            href=quote(child.name) + ("/" if is_dir else ""),
            is_dir=is_dir,
            size=info.st_size,
            modified=datetime.fromtimestamp(info.st_mtime, UTC).strftime("%Y-%m-%d %H:%M:%S"),
        ))
    # The test report first: it is where a reviewer learns why a build failed.
    entries.sort(key=lambda e: (e.name != RESULTS_FILE, not e.is_dir, e.name))
    crumbs = []
    parts = [p for p in subpath.split("/") if p]
    for i, part in enumerate(parts):
        crumbs.append((part, url_for("logs.serve", subpath="/".join(parts[: i + 1]) + "/")))
    return render_template("logs.html", entries=entries, crumbs=crumbs, at_root=not parts,
                           build=_build_of(parts, directory), results_file=RESULTS_FILE)


def _build_of(parts: list[str], directory: Path) -> Build | None:
    """The build whose log tree `directory` is (they sit at `<change>/<ps>/<dir>`), if any."""
    if len(parts) != 3:
        return None
    # log_path is what the worker wrote: the configured log dir joined with the tree's path.
    paths = {str(config().logs.dir / "/".join(parts)), str(directory)}
    return db().scalars(select(Build).where(Build.log_path.in_(paths))
                        .order_by(Build.id.desc()).limit(1)).first()
