"""Publishing a build's log tree: redact secrets, gzip big files, write an index.

Runs after collection and before the log URL goes anywhere, so nothing
unredacted is ever browsable. `prune_logs` applies the retention setting.
"""

from __future__ import annotations

import gzip
import html
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from runners.results import RESULTS_FILE

logger = logging.getLogger(__name__)

INDEX = "index.html"


def _is_text(data: bytes) -> bool:
    return b"\x00" not in data[:8192]


def redact_file(path: Path, redact: Callable[[str], str]) -> bool:
    """Rewrite a text file (plain or .gz) with secrets masked; True if it changed.

    Binary files are left as they are.
    """
    compressed = path.suffix == ".gz"
    data = path.read_bytes()
    if compressed:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError):
            return False
    if not _is_text(data):
        return False
    text = data.decode("utf-8", errors="replace")
    clean = redact(text)
    if clean == text:
        return False
    encoded = clean.encode("utf-8")
    path.write_bytes(gzip.compress(encoded) if compressed else encoded)
    return True


def gzip_file(path: Path) -> Path:
    """Replace `path` with `path.gz`."""
    target = path.with_name(path.name + ".gz")
    with path.open("rb") as src, gzip.open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    path.unlink()
    return target


def write_index(directory: Path) -> None:
    """An index.html in every directory of the tree (reviewers browse without a listing server)."""
    for current, dirs, files in os.walk(directory):
        here = Path(current)
        rel = here.relative_to(directory)
        title = "logs" if str(rel) == "." else f"logs / {rel}"
        rows = []
        if str(rel) != ".":
            rows.append('<li><a href="../index.html">../</a></li>')
        for name in sorted(dirs):
            rows.append(f'<li><a href="{quote(name)}/index.html">{html.escape(name)}/</a></li>')
        # The test report first: it is where a reviewer learns why a build failed.
        for name in sorted(files, key=lambda n: (n != RESULTS_FILE, n)):
            if name == INDEX:
                continue
            size = (here / name).stat().st_size
            link = f'<a href="{quote(name)}">{html.escape(name)}</a>'
            rows.append(f"<li>{link} ({size:,} bytes)</li>")
        page = (
            "<!doctype html><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><h1>{html.escape(title)}</h1>"
            f"<ul>{''.join(rows)}</ul>\n"
        )
        (here / INDEX).write_text(page, encoding="utf-8")


def move_tree(source: Path, target: Path) -> None:
    """Move every file of `source` into `target` (merging directories), then remove `source`."""
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        dest = target / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, dest)
    shutil.rmtree(source, ignore_errors=True)


def publish_logs(log_dir: Path, redact: Callable[[str], str], gzip_over: int,
                 staging: Path | None = None) -> None:
    """Make a collected log tree safe and browsable: redact, compress, index.

    Files collected in a private `staging` tree are redacted there first and
    only then moved into the browsable `log_dir`.
    """
    if staging is not None and staging.is_dir():
        for path in (p for p in staging.rglob("*") if p.is_file()):
            redact_file(path, redact)
        move_tree(staging, log_dir)
    for path in sorted(p for p in log_dir.rglob("*") if p.is_file() and p.name != INDEX):
        if redact_file(path, redact):
            logger.info("redacted secrets in %s", path)
        if path.suffix != ".gz" and path.stat().st_size > gzip_over:
            gzip_file(path)
    write_index(log_dir)


def prune_logs(root: Path, retention_days: int, now: float | None = None) -> int:
    """Delete build log trees older than the retention; returns how many were removed.

    A build's tree is `<root>/<change>/<patchset>/<job>-<build>`; its age is
    its directory's modification time.
    """
    if not root.is_dir():
        return 0
    cutoff = (now or time.time()) - retention_days * 86400
    removed = 0
    for build_dir in root.glob("*/*/*"):
        if build_dir.is_dir() and build_dir.stat().st_mtime < cutoff:
            shutil.rmtree(build_dir, ignore_errors=True)
            removed += 1
    for parent in sorted(root.glob("*/*"), reverse=True) + sorted(root.glob("*")):
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
    return removed
