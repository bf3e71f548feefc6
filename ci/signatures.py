"""Known-failure signatures: a failure the lab already knows about, with its bug.

elastic-recheck's idea (an id, a bug, a query over a build's logs) folded
into the vote: a failed test that matches a signature is *known*, not the
change's fault (ci/verdict.py). A signature file is YAML, a list of entries
(or a mapping with a `signatures:` list):

    - id: hyperv-vm-boot-timeout
      bug: https://bugs.launchpad.net/compute-hyperv/+bug/1234567
      file: controller/logs/n-cpu.log      # a log file of the build, relative
      pattern: 'Timed out waiting for the VM to start'
    - id: resize-scheduling
      bug: https://bugs.launchpad.net/nova/+bug/7654321
      test: 'test_resize_server'            # over a failed test's id
      traceback: 'could not be scheduled'   # over its traceback

Every part given must match: the log pattern somewhere in the file, the
`test` regex in the failed test's id, the `traceback` regex in its
traceback. A signature with only `file`/`pattern` explains every failed test
of a build whose log matches.

Regular expressions are RE2's (google-re2), not Python's `re`: RE2 matches in
time linear in the text, so no signature can backtrack catastrophically over
a 100 MB log (RE2 has no backreferences or lookaround; a pattern using them
is refused on load). Logs are bounded too: only the last `scan_bytes` of a
file are read (default 1 MiB: where a failure shows), line by line, each
line cut at `LINE_CHARS`. The file is validated on load; a bad entry is a
ConfigError naming the signature.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

import re2
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ci.config_base import ConfigError

SCAN_BYTES = 1024 * 1024  # default: the last MiB of a log file
LINE_CHARS = 4096  # a longer line is matched on its first LINE_CHARS characters
EXCERPT_CHARS = 300  # of the matching line or traceback, stored and shown
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # the error goes into the ConfigError, not stderr
    return options


@lru_cache(maxsize=1024)
def compile_rule(pattern: str) -> Any:
    """The RE2 program of `pattern` (cached); raises ValueError when RE2 refuses it."""
    try:
        return re2.compile(pattern, _options())
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(
            exc.args[0], bytes) else str(exc)
        raise ValueError(f"not a valid RE2 regular expression: {reason}") from None


class Signature(BaseModel):
    """One known failure: its id, its bug, and what a failure of it looks like."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    bug: str = Field(pattern=r"^https?://\S+$")
    file: str | None = None
    pattern: str | None = None
    test: str | None = None
    traceback: str | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.fullmatch(value):
            raise ValueError("letters, digits and _.:- only, at most 128")
        return value

    @field_validator("file")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or not path.parts or "\\" in value:
            raise ValueError("a path inside the build's log tree (relative, no '..')")
        return value

    @field_validator("pattern", "test", "traceback")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            compile_rule(value)
        return value

    @model_validator(mode="after")
    def _parts(self) -> Signature:
        if (self.file is None) != (self.pattern is None):
            raise ValueError("`file` and `pattern` go together")
        if self.pattern is None and self.test is None and self.traceback is None:
            raise ValueError("give `file` and `pattern`, or `test` and/or `traceback`")
        return self


@dataclass(frozen=True)
class FailedTest:
    """A failed test of a build, as signatures see it."""

    test_id: str
    details: str = ""


@dataclass(frozen=True)
class SignatureMatch:
    """A signature that matched a failed test of a build (and, for a log rule, where)."""

    signature_id: str
    bug: str
    test_id: str | None
    file: str | None = None
    excerpt: str = ""


def parse_signatures(data: object, source: str) -> tuple[Signature, ...]:
    """Validate a parsed signature file; a ConfigError names the entry and the problem."""
    if isinstance(data, dict) and set(data) == {"signatures"}:
        data = data["signatures"]
    if data is None:
        return ()
    if not isinstance(data, list):
        raise ConfigError(f"{source}: a list of signatures (or `signatures:` holding one)")
    found: list[Signature] = []
    seen: set[str] = set()
    for index, entry in enumerate(data):
        name = entry.get("id") if isinstance(entry, dict) else None
        where = f"{source}: signature {name!r}" if name else f"{source}: signature #{index + 1}"
        try:
            signature = Signature.model_validate(entry)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: "
                f"{err['msg'].removeprefix('Value error, ')}"
                for err in exc.errors())
            raise ConfigError(f"{where}: {problems}") from None
        if signature.id in seen:
            raise ConfigError(f"{where}: the id is used twice")
        seen.add(signature.id)
        found.append(signature)
    return tuple(found)


def load_signatures(path: Path) -> tuple[Signature, ...]:
    """Read and validate a signature file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_signatures(data, str(path))


def _excerpt(text: str) -> str:
    return text.strip()[:EXCERPT_CHARS]


def tail_lines(path: Path, scan_bytes: int) -> Iterable[str]:
    """The lines of the last `scan_bytes` of a (possibly gzipped) file, each cut at LINE_CHARS.

    A gzipped file is decompressed as a stream and only its last `scan_bytes`
    kept, so a huge log costs time to read but never that much memory.
    """
    if path.suffix == ".gz":
        kept = b""
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(256 * 1024):
                kept = (kept + chunk)[-scan_bytes:]
        data = kept
    else:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - scan_bytes))
            data = handle.read(scan_bytes)
    for line in data.decode("utf-8", errors="replace").splitlines():
        yield line[:LINE_CHARS]


def _log_file(log_dir: Path, name: str) -> Path | None:
    """The build's log file `name` (or its `.gz`), if it lies inside the log tree."""
    root = log_dir.resolve()
    for candidate in (log_dir / name, log_dir / f"{name}.gz"):
        try:
            resolved = candidate.resolve()
            resolved.relative_to(root)
        except (OSError, ValueError):
            continue  # a symlink out of the tree is not the build's log
        if resolved.is_file():
            return resolved
    return None


@dataclass(frozen=True)
class LogTail:
    """The bounded tail of one log file: its lines, and the same joined (one search)."""

    lines: list[str]
    text: str


def read_tail(log_dir: Path, name: str, scan_bytes: int) -> LogTail | None:
    """The bounded tail of the build's log `name` (None: no such file, or unreadable)."""
    path = _log_file(log_dir, name)
    if path is None:
        return None
    try:
        lines = list(tail_lines(path, scan_bytes))
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    return LogTail(lines, "\n".join(lines))


def first_match(tail: LogTail, pattern: str) -> str | None:
    """The first line of `tail` that `pattern` matches, as an excerpt.

    One search over the whole tail first, in multi-line mode (RE2's `.` never
    crosses a newline; `^`/`$` are line ends): no hit there, no line matches,
    which is the usual answer, found at C speed. On a hit, the lines from the
    hit's on are tried one by one (a hit can span lines, e.g. through `[^x]`).
    """
    hit = compile_rule(f"(?m){pattern}").search(tail.text)
    if hit is None:
        return None
    rule = compile_rule(pattern)
    first = tail.text.count("\n", 0, hit.start())
    return next((_excerpt(line) for line in tail.lines[first:] if rule.search(line)), None)


def match_failures(signatures: Sequence[Signature], failed: Sequence[FailedTest],
                   log_dir: Path | None, scan_bytes: int = SCAN_BYTES) -> list[SignatureMatch]:
    """Every (signature, failed test) pair that matches, in signature then test order.

    Each named log file is read once (its bounded tail), whatever the number
    of signatures over it; a build without a log tree matches no log rule.
    """
    matches: list[SignatureMatch] = []
    tails: dict[str, LogTail | None] = {}
    for signature in signatures:
        line: str | None = None
        if signature.file is not None and signature.pattern is not None:
            if log_dir is None:
                continue
            if signature.file not in tails:
                tails[signature.file] = read_tail(log_dir, signature.file, scan_bytes)
            tail = tails[signature.file]
            line = first_match(tail, signature.pattern) if tail is not None else None
            if line is None:
                continue
        for test in failed:
            if signature.test is not None and not compile_rule(signature.test).search(
                    test.test_id):
                continue
            found = ""
            if signature.traceback is not None:
                hit = compile_rule(signature.traceback).search(test.details)
                if hit is None:
                    continue
                found = _excerpt(_line_around(test.details, hit.start()))
            matches.append(SignatureMatch(signature.id, signature.bug, test.test_id,
                                          signature.file, line if line is not None else found))
    return matches


def _line_around(text: str, index: int) -> str:
    start = text.rfind("\n", 0, index) + 1
    end = text.find("\n", index)
    return text[start:end if end != -1 else len(text)]
