"""Subunit v2 streams (from `tempest run --subunit` / `stestr run --subunit`) to per-test results.

The verdict of a tempest run comes from here, never from the runner's exit
code (`stestr run --subunit` exits 0 when tests fail) nor from grepping its
console output, whose format changes between releases.
"""

from __future__ import annotations

import codecs
import functools
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from testtools.content_type import ContentType
from testtools.testresult.real import _make_content_type

from runners.base import TestOutcome
from runners.subunit_v2 import read_packets

logger = logging.getLogger(__name__)

__all__ = ["FLAKY", "STATUSES", "STREAM_STATUSES", "AttachmentStore", "Summary", "TestOutcome",
           "parse_subunit", "summarize"]

# What a subunit stream can end a test with.
STREAM_STATUSES = ("success", "fail", "skip", "xfail", "uxsuccess")
# Plus ours: a test that failed, then passed when re-run (runners.rerun): not a failure.
FLAKY = "flaky"
STATUSES = (*STREAM_STATUSES, FLAKY)
_FAILING = frozenset({"fail", "uxsuccess"})
# Details worth showing for a test, most useful first.
_DETAIL_ORDER = ("traceback", "reason")


@dataclass(frozen=True)
class Summary:
    """Counts per status and the verdict of a run."""

    counts: dict[str, int] = field(default_factory=dict)
    total: int = 0
    failed: tuple[str, ...] = ()  # ids of fail and uxsuccess tests, in stream order
    flaky: tuple[str, ...] = ()  # ids of tests that passed only when re-run

    @property
    def executed(self) -> int:
        """Tests that ran (everything but skips; a flaky test ran)."""
        return self.total - self.counts.get("skip", 0)

    @property
    def passed(self) -> bool:
        """No failure, no unexpected success, and at least one test really ran."""
        return not self.failed and self.executed > 0

    def line(self) -> str:
        """A one-line human summary, e.g. for a Gerrit comment."""
        parts = [f"{self.counts.get(s, 0)} {s}" for s in STATUSES if self.counts.get(s)]
        return f"{self.total} tests: " + (", ".join(parts) if parts else "none ran")


@functools.lru_cache(maxsize=64)
def _content_type(mime_type: str | None) -> ContentType:
    # testtools' own parse (an email header parse, ~0.4 ms), once per distinct
    # mime type of a stream rather than once per attachment. Shared, never changed.
    return _make_content_type(mime_type)


@functools.lru_cache(maxsize=64)
def _is_utf8(charset: str) -> bool:
    try:
        return codecs.lookup(charset).name == "utf-8"
    except LookupError:
        return False  # decoding it raises, as testtools' does


@dataclass(slots=True)
class Attachment:
    """A test's file attachment, as testtools' `Content` gives it (`content_type`,
    `iter_bytes`, `as_text`): its chunks are views of the stream's bytes."""

    content_type: ContentType
    chunks: list[bytes | memoryview]

    def iter_bytes(self) -> Iterator[bytes | memoryview]:
        return iter(self.chunks)

    def as_text(self) -> str:
        """As `Content.as_text`: the charset parameter, ISO-8859-1 without one;
        raises LookupError or UnicodeDecodeError as it does."""
        encoding = self.content_type.parameters.get("charset", "ISO-8859-1")
        if _is_utf8(encoding):
            return b"".join(self.chunks).decode("utf-8")
        decoder = codecs.getincrementaldecoder(encoding)()
        return "".join([*(decoder.decode(chunk) for chunk in self.chunks),
                        decoder.decode(b"", True)])


@dataclass(slots=True)
class _Record:
    """A test between its first event and its last (testtools' `_TestRecord`)."""

    test_id: str
    first_us: int | None
    status: str = "unknown"  # only file events seen
    last_us: int | None = None
    details: dict[str, Attachment] = field(default_factory=dict)


def _text(content: Any) -> str:
    try:
        return str(content.as_text())
    except (UnicodeDecodeError, LookupError):
        return b"".join(content.iter_bytes()).decode("utf-8", errors="replace")


def _text_utf8(content: Any) -> bytes | str:
    """`_text(content)`, as UTF-8 bytes when the attachment's own bytes are that."""
    if _is_utf8(content.content_type.parameters.get("charset", "ISO-8859-1")):
        raw = b"".join(content.iter_bytes())
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="replace")
        return raw
    return _text(content)


def _details_text(details: dict[str, Any]) -> str:
    names = [n for n in _DETAIL_ORDER if n in details]
    names += sorted(n for n in details if n not in _DETAIL_ORDER)
    texts: list[str] = []
    for name in names:
        content = details[name]
        if content.content_type.type != "text":
            continue  # binary attachments (e.g. captured pickles) are not for humans
        text = _text(content)
        if text.strip():
            texts.append(text if name in _DETAIL_ORDER else f"{name}:\n{text}")
    return "\n".join(texts)


def _kept_names(status: str) -> tuple[str, ...]:
    """The details a stored result keeps: a failure's traceback (the dashboard
    and the report show it) and any test's reason (a skip's); the rest is a file."""
    return _DETAIL_ORDER if status in _FAILING else ("reason",)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class AttachmentStore:
    """Writes tests' attachments under `root/prefix`: one text file per test class.

    Tempest attaches each test's captured logging (and stdout/stderr when
    captured) to its subunit events; on a heavy run that is megabytes, which
    belong in the log tree beside the stream, not in the database. A file per
    class (`module.Class`, tempest's unit of setup) keeps its tests' sections
    together and costs one file open per class, not per test. Two classes
    whose names sanitise alike get numbered files. The files land in the
    build's private staging tree, which the worker redacts before publishing
    (runners/logs.py). `close` ends them (parse_subunit does).
    """

    root: Path
    prefix: str = "attachments"
    _files: dict[str, tuple[str, Any]] = field(default_factory=dict)  # class -> (rel, file)
    _names: set[str] = field(default_factory=set)

    def write(self, test_id: str, details: dict[str, Any]) -> str:
        """Append the test's attachments to its class's file; returns that file's path
        relative to `root`."""
        owner = test_id.split("[", 1)[0].rsplit(".", 1)[0] or "tests"  # module.Class
        if owner not in self._files:
            base = _UNSAFE.sub("_", owner).strip("_")[-150:] or "tests"
            name, n = base, 1
            while name in self._names:
                n += 1
                name = f"{base}-{n}"
            self._names.add(name)
            rel = f"{self.prefix}/{name}.txt"
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            # Binary, the text encoded here: a UTF-8 attachment is copied as it
            # came once it decodes (no decode and re-encode of megabytes).
            self._files[owner] = (rel, path.open("wb"))
        rel, out = self._files[owner]
        parts: list[bytes | str] = [f"{'#' * 72}\n# {test_id}\n{'#' * 72}\n"]
        for key in sorted(details):
            content = details[key]
            if content.content_type.type == "text":
                parts.append(f"===== {key} ({content.content_type}) =====\n")
                parts.append(_text_utf8(content))
                parts.append("\n")
            else:
                size = sum(len(chunk) for chunk in content.iter_bytes())
                parts.append(f"===== {key} ({content.content_type}): {size} bytes of binary, "
                             "kept in the subunit stream only =====\n")
        parts.append("\n")
        out.write(b"".join(part if isinstance(part, bytes) else
                           part.encode("utf-8", errors="replace") for part in parts))
        return rel

    def close(self) -> None:
        for _rel, out in self._files.values():
            out.close()
        self._files.clear()


def _duration(first_us: int | None, last_us: int | None) -> float | None:
    if first_us is None or last_us is None:
        return None
    return max((last_us - first_us) / 1e6, 0.0)


def _tests(data: bytes) -> Iterator[_Record]:
    """The stream's tests as they end, as testtools' `StreamToDict` reports them:
    keyed by test id and route code, the first event's timestamp and the last's,
    an attachment's mime type from its first non-empty chunk; tests never ended
    last, newest first, with no end timestamp. Events without a test id go."""
    running: dict[tuple[str, str | None], _Record] = {}
    for packet in read_packets(data):
        test_id = packet.test_id
        if test_id is None:
            continue
        key = (test_id, packet.route_code)
        record = running.get(key)
        if record is None:
            record = running[key] = _Record(test_id, packet.timestamp_us)
        status = packet.status
        if status is not None:
            record.status = status
        record.last_us = packet.timestamp_us
        name, chunk = packet.file_name, packet.file_bytes
        if name is not None and chunk:
            attachment = record.details.get(name)
            if attachment is None:
                record.details[name] = Attachment(_content_type(packet.mime_type), [chunk])
            else:
                attachment.chunks.append(chunk)
        if status is not None and status != "inprogress":
            del running[key]
            yield record
    while running:
        record = running.popitem()[1]
        record.last_us = None
        yield record


def parse_subunit(stream: BinaryIO | bytes,
                  attachments: AttachmentStore | None = None) -> list[TestOutcome]:
    """Every test of a subunit v2 stream, in the order they completed.

    With an `attachments` store, each outcome's details keep only a failure's
    traceback and a reason; its other attachments go to a file of the store
    (`TestOutcome.attachments`). Without one, details hold every text
    attachment (for callers that store nothing).

    Bytes that are not subunit are tolerated (skipped, as python-subunit
    does); a corrupt packet shows up as a failing test named
    `subunit.parser`, so a damaged stream can never pass. A test the stream
    started but never finished (a worker crashed) counts as `fail`.
    """
    data = stream if isinstance(stream, bytes | bytearray) else stream.read()
    outcomes: list[TestOutcome] = []
    try:
        for test in _tests(bytes(data)):
            status = test.status
            if status == "exists":
                continue  # the enumeration event both producers send before running
            every: dict[str, Any] = test.details
            stored = ""
            if attachments is not None:
                kept = _kept_names(status if status in STREAM_STATUSES else "fail")
                rest = {k: v for k, v in every.items() if k not in kept}
                every = {k: v for k, v in every.items() if k in kept}
                if rest:
                    stored = attachments.write(test.test_id, rest)
            details = _details_text(every)
            if status not in STREAM_STATUSES:
                logger.warning("test %s ended with status %r; counting it as failed",
                               test.test_id, status)
                details = (details + "\n" if details else "") + "the test did not complete"
                status = "fail"
            outcomes.append(TestOutcome(test.test_id, status,
                                        _duration(test.first_us, test.last_us), details,
                                        attachments=stored))
    finally:
        if attachments is not None:
            attachments.close()
    return outcomes


def summarize(results: Iterable[TestOutcome]) -> Summary:
    """Count the results per status and decide whether the run passed."""
    results = list(results)
    counts = Counter(r.status for r in results)
    failed = tuple(r.test_id for r in results if r.status in _FAILING)
    flaky = tuple(r.test_id for r in results if r.status == FLAKY)
    return Summary(counts=dict(counts), total=len(results), failed=failed, flaky=flaky)
