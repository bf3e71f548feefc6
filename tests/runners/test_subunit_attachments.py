"""Tests' subunit attachments go to the build's log tree, not the database
(issue 14): a passing test keeps nothing in `details`, a failure keeps its
traceback, and both have their captured logging in a published file."""

from __future__ import annotations

import datetime
import io
import sys
from pathlib import Path

import subunit
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from ci.models import Build, BuildState, TestResult
from dashboard import create_app
from runners.subunit import AttachmentStore, parse_subunit
from runners.worker import Worker
from tests.runners.test_worker import enqueue, make_config

LOGGING = "2026-12-02 DEBUG tempest.lib.common.rest_client 请求 GET /servers → 200 «ok»\n"
PASSING = 300


def heavy_stream(passing: int = PASSING, log_lines: int = 40) -> bytes:
    """A tempest-shaped stream: every test carries its captured logging."""
    out = io.BytesIO()
    stream = subunit.StreamResultToBytes(out)
    now = datetime.datetime.now(datetime.UTC)

    def test(test_id: str, status: str, **attachments: tuple[str, bytes]) -> None:
        stream.status(test_id=test_id, test_status="inprogress", timestamp=now)
        for name, (mime, data) in attachments.items():
            stream.status(test_id=test_id, file_name=name, file_bytes=data, mime_type=mime,
                          eof=True, timestamp=now)
        stream.status(test_id=test_id, test_status=status, timestamp=now)

    text = "text/plain;charset=utf8"
    logging = (LOGGING * log_lines).encode()
    for i in range(passing):
        test(f"tempest.api.compute.servers.test_list.ListServers.test_{i}[id-{i:04d},smoke]",
             "success", pythonlogging=(text, logging))
    test("tempest.api.compute.servers.test_boot.BootTest.test_fails", "fail",
         traceback=(text, "Traceback: 实例 boom\n".encode()), pythonlogging=(text, logging),
         pickle=("application/octet-stream", b"\x80\x04binary"))
    test("tempest.api.compute.test_skip.SkipTest.test_skip", "skip",
         reason=(text, b"Hyper-V does not do that"))
    return out.getvalue()


def test_parse_with_a_store_keeps_only_traceback_and_reason(tmp_path: Path) -> None:
    store = AttachmentStore(tmp_path)
    outcomes = {t.test_id.split(".")[-1]: t for t in parse_subunit(heavy_stream(3), store)}
    passed = outcomes["test_0[id-0000,smoke]"]
    assert passed.details == ""
    shared = (tmp_path / passed.attachments).read_text(encoding="utf-8")
    assert LOGGING in shared
    # One file per test class, each test a section of its own.
    second = outcomes["test_1[id-0001,smoke]"]
    assert second.attachments == passed.attachments
    assert passed.test_id in shared and second.test_id in shared
    failed = outcomes["test_fails"]
    assert failed.details == "Traceback: 实例 boom\n"
    kept = (tmp_path / failed.attachments).read_text(encoding="utf-8")
    assert "===== pythonlogging" in kept and LOGGING in kept
    assert "pickle (application/octet-stream): 8 bytes of binary" in kept
    skipped = outcomes["test_skip"]
    assert skipped.details == "Hyper-V does not do that" and skipped.attachments == ""
    # Without a store (a caller that stores nothing) details keep every text attachment.
    plain = {t.test_id.split(".")[-1]: t for t in parse_subunit(heavy_stream(1))}
    assert LOGGING in plain["test_0[id-0000,smoke]"].details


def test_the_database_holds_no_passing_attachment_and_the_files_are_published(
    sqlite_sessions: sessionmaker[Session], tmp_path: Path,
) -> None:
    stream = tmp_path / "heavy.subunit"
    stream.write_bytes(heavy_stream())
    code = ("import os, shutil, sys; shutil.copy(sys.argv[1], "
            "os.path.join(os.environ['HYPERV_CI_LOG_DIR'], 'testrepository.subunit'))")
    config = make_config(tmp_path, [sys.executable, "-c", code, str(stream)])
    build_id = enqueue(sqlite_sessions)
    assert Worker(config, sqlite_sessions, name="w1").run_once()
    with sqlite_sessions() as session:
        build = session.get(Build, build_id)
        assert build is not None and build.state == BuildState.FAILED
        rows = list(session.scalars(select(TestResult).where(TestResult.build_id == build_id)))
        stored = session.scalar(select(func.sum(func.length(TestResult.details))))
    assert len(rows) == PASSING + 2
    assert stored is not None and stored < 200  # a traceback and a reason, no logging
    tree = Path(build.log_path)
    for row in rows:
        if row.status == "success":
            assert row.details == ""
            assert row.attachments and row.attachments.startswith("attachments/")
            published = tree / row.attachments
            text = published.read_text(encoding="utf-8") if published.suffix != ".gz" else ""
            assert published.is_file() and (not text or LOGGING in text)
    (failed,) = (r for r in rows if r.status == "fail")
    assert failed.details == "Traceback: 实例 boom\n"
    assert failed.attachments and (tree / failed.attachments).is_file()
    assert (tree / "attachments" / "index.html").is_file()  # browsable like the rest
    # The build page links the failure's attachments and a passing test's.
    client = create_app(config, sessions=sqlite_sessions,
                        test_config={"TESTING": True}).test_client()
    page = client.get(f"/builds/{build_id}").get_data(as_text=True)
    assert f'href="{build.log_url}{failed.attachments}">attachments</a>' in page
    first = next(r for r in rows if r.status == "success")
    assert f'href="{build.log_url}{first.attachments}">attachments</a>' in page
