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
from pathlib import Path
from urllib.parse import quote

from runners.redaction import Redactor
from runners.results import RESULTS_FILE

logger = logging.getLogger(__name__)

INDEX = "index.html"


#: What a binary file holding a secret is replaced with: it cannot be
#: rewritten without corrupting it, and it must never be published.
WITHHELD = "hyperv-ci withheld this file: it contained a configured secret\n"

_UTF16_BOMS = {b"\xff\xfe": "utf-16-le", b"\xfe\xff": "utf-16-be"}


def _decode(data: bytes) -> tuple[str, bytes, str] | None:
    """(text, BOM, codec) when `data` is UTF-16 with a BOM or strict UTF-8; None if binary."""
    bom = data[:2]
    codec = _UTF16_BOMS.get(bom)
    if codec is not None:
        try:
            return data[2:].decode(codec), bom, codec
        except UnicodeDecodeError:
            return None
    try:
        # Strict: a binary stream that merely lacks NUL bytes (subunit) is not text.
        return data.decode("utf-8"), b"", "utf-8"
    except UnicodeDecodeError:
        return None


def redact_file(path: Path, redact: Redactor) -> bool:
    """Mask secrets in a file (plain or .gz); True if it changed.

    UTF-8 text and UTF-16 text with a BOM are rewritten in their own encoding
    with every secret masked. A binary file that holds a secret (in UTF-8,
    UTF-16-LE or ANSI bytes) is replaced with the `WITHHELD` notice; other
    binary files are left byte for byte.
    """
    compressed = path.suffix == ".gz"
    raw = path.read_bytes()
    data = raw
    if compressed:
        try:
            data = gzip.decompress(raw)
        except (OSError, EOFError):
            compressed = False  # not really gzip: judge its bytes as they are
    out = data
    decoded = _decode(data)
    if decoded is not None:
        text, bom, codec = decoded
        out = bom + redact(text).encode(codec)
    # Also after redacting text: "UTF-8" full of NULs can hide a UTF-16 secret.
    if redact.found_in(out):
        logger.warning("withholding %s: it holds a secret that cannot be masked in place", path)
        out = WITHHELD.encode("utf-8")
    if out == data:
        return False
    path.write_bytes(gzip.compress(out) if compressed else out)
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


def move_tree(source: Path, target: Path, files: list[Path] | None = None) -> None:
    """Move every file of `source` (`files`, when the caller listed them) into `target`
    (merging directories), then remove `source`."""
    listed = files if files is not None else [p for p in source.rglob("*") if p.is_file()]
    for path in sorted(listed):
        dest = target / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, dest)
    try:
        source.rmdir()  # usually empty by now (a job that collected no directories)
    except OSError:
        shutil.rmtree(source, ignore_errors=True)


def publish_logs(log_dir: Path, redact: Redactor, gzip_over: int,
                 staging: Path | None = None) -> None:
    """Make a collected log tree safe and browsable: redact, compress, index.

    Files collected in a private `staging` tree are redacted there first and
    only then moved into the browsable `log_dir`.
    """
    if staging is not None and staging.is_dir():
        # Listed once, for redacting and for moving (a no-op build stages nothing).
        staged = [p for p in staging.rglob("*") if p.is_file()]
        for path in staged:
            redact_file(path, redact)
        move_tree(staging, log_dir, staged)
    for path in sorted(p for p in log_dir.rglob("*") if p.is_file() and p.name != INDEX):
        if redact_file(path, redact):
            logger.info("redacted secrets in %s", path)
        if path.suffix != ".gz" and path.stat().st_size > gzip_over:
            gzip_file(path)
    write_index(log_dir)


def published_name(log_dir: Path, rel: str) -> str:
    """`rel` (a file of the build's tree) as `publish_logs` left it: `.gz` added
    when it was big enough to compress, so a link to it is not dead."""
    if not rel or (log_dir / rel).is_file():
        return rel
    compressed = rel + ".gz"
    return compressed if (log_dir / compressed).is_file() else rel


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
