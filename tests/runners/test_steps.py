"""Step recording: rows, log files, live tail, redaction across chunk boundaries."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.models import BuildStep, StepState
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
