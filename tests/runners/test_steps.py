"""Step recording: rows, log files, live tail, redaction across chunk boundaries."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.models import BuildStep, StepState
from runners import steps as steps_module
from runners.base import InfraError
from runners.steps import REDACTED, StepRecorder, make_redactor


def recorder(sessions: sessionmaker[Session], log_dir: Path) -> StepRecorder:
    with sessions() as session, session.begin():
        ps = queue.upsert_patchset(session, queue.ChangeInfo(
            number=1, project="p", branch="master", patchset=1))
        build = queue.enqueue(session, ps, "j", "t")
        assert build is not None
        build_id = build.id
    return StepRecorder(sessions, build_id, log_dir, make_redactor(["hunter2-secret"]))


def steps(sessions: sessionmaker[Session]) -> list[BuildStep]:
    with sessions() as session:
        return list(session.scalars(select(BuildStep).order_by(BuildStep.id)))


def test_step_records_output_and_state(sqlite_sessions: sessionmaker[Session],
                                       tmp_path: Path) -> None:
    rec = recorder(sqlite_sessions, tmp_path)
    with rec.step("stack", node="devstack-1") as step:
        step.write("stacking 中文 ")
        step.write("pass=hunt")
        step.write("er2-secret done\npartial")
    (row,) = steps(sqlite_sessions)
    assert row.state == StepState.SUCCEEDED and row.node == "devstack-1"
    assert row.finished_at is not None
    text = (tmp_path / row.log_name).read_text(encoding="utf-8")
    assert "hunter2-secret" not in text and REDACTED in text
    assert "stacking 中文" in text and text.endswith("partial\n")
    assert "hunter2-secret" not in row.output_tail and "partial" in row.output_tail


def test_exceptions_mark_error_or_failed(sqlite_sessions: sessionmaker[Session],
                                         tmp_path: Path) -> None:
    rec = recorder(sqlite_sessions, tmp_path)
    with pytest.raises(InfraError), rec.step("bootstrap", node="hv-1"):
        raise InfraError("WinRM refused")
    with pytest.raises(ValueError), rec.step("tempest"):
        raise ValueError("bad stream")
    rec.skip("cleanup", message="not needed")
    states = [(s.name, s.state) for s in steps(sqlite_sessions)]
    assert states == [("bootstrap", StepState.ERROR), ("tempest", StepState.FAILED),
                      ("cleanup", StepState.SKIPPED)]
    assert steps(sqlite_sessions)[0].message == "WinRM refused"


def _tail_of(sessions: sessionmaker[Session], step_id: int) -> str:
    with sessions() as session:
        row = session.get(BuildStep, step_id)
        assert row is not None
        return row.output_tail or ""


def _timers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if isinstance(t, threading.Timer)}


def test_tail_reaches_the_database_when_the_command_goes_quiet(
        sqlite_sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(steps_module, "FLUSH_SECONDS", 0.2)
    rec = recorder(sqlite_sessions, tmp_path)
    before = _timers()
    handle = rec.start("stack", node="devstack-1")
    try:
        handle.write("cloning nova\n")  # the first line is pushed at once
        handle.write("installing 依赖 with hunter2-secret\n")  # inside the window: no push yet
        # The command is quiet now: the step is still open and nothing else is written.
        deadline = time.monotonic() + 10
        while "installing" not in _tail_of(sqlite_sessions, handle.step_id):
            assert time.monotonic() < deadline, "the live tail stayed stale"
            time.sleep(0.05)
        tail = _tail_of(sqlite_sessions, handle.step_id)
        assert "cloning nova" in tail and "installing 依赖" in tail
        assert "hunter2-secret" not in tail and REDACTED in tail
    finally:
        handle.close()
    assert _timers() <= before  # no flush timer outlives its step


def test_close_stops_a_pending_flush_timer(sqlite_sessions: sessionmaker[Session],
                                           tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(steps_module, "FLUSH_SECONDS", 60.0)
    rec = recorder(sqlite_sessions, tmp_path)
    before = _timers()
    handle = rec.start("tempest")
    handle.write("one\n")
    handle.write("two\n")  # arms a timer a minute out
    assert _timers() - before
    started = time.monotonic()
    handle.close()
    assert time.monotonic() - started < 5  # cancelled, not waited out
    assert _timers() <= before
    (row,) = steps(sqlite_sessions)
    assert row.output_tail == "one\ntwo\n" and row.state == StepState.SUCCEEDED


def test_nul_in_output_is_dropped_on_every_engine(sessions: sessionmaker[Session],
                                                  tmp_path: Path) -> None:
    # PostgreSQL refuses NUL in text; a tool printing one must not fail the build.
    rec = recorder(sessions, tmp_path)
    with rec.step("tempest", node="devstack-1") as step:
        step.write("binary\x00junk 中\n")
        step.finish(StepState.FAILED, "exit\x00 1", 1)
    (row,) = steps(sessions)
    assert row.output_tail == "binaryjunk 中\n" and row.message == "exit 1"
    assert (tmp_path / str(row.log_name)).read_text(encoding="utf-8") == "binaryjunk 中\n"
