"""ci.errors: one root, transient apart from permanent and from control flow.

What each catcher decides from the branch alone: the scheduler's retry
(`is_transient`), the reporter's verdict (`classify_send_error`), and the
executors' "the transport failed" (a timeout or an abort never is).
"""

from __future__ import annotations

import paramiko
import pytest
from sqlalchemy.exc import OperationalError

from ci.config import ConfigError
from ci.errors import ControlFlow, HypervCIError, PermanentError, TransientError
from ci.gerrit_errors import (
    GerritError,
    GerritRefused,
    GerritRejected,
    GerritUnavailable,
    LabelRefused,
)
from ci.report_checks import CannotAsk, Verdict, classify_send_error
from listener.scheduler import is_transient
from runners.base import CommandAborted, CommandTimeout, ExecutorError, InfraError
from runners.job_values import RenderError
from runners.merger import MergeConflict, MergeError
from runners.oslo_check import OsloCheckError
from runners.pool import NodeBusy
from runners.recovery import UnknownNode
from runners.windows_values import ArtefactError


@pytest.mark.parametrize(("exc", "branch"), [
    (ExecutorError("hv-1 unreachable"), TransientError),
    (InfraError("stack.sh failed"), TransientError),
    (MergeError("git fetch failed"), TransientError),
    (GerritError("connection reset"), TransientError),
    (GerritRefused("host key mismatch"), TransientError),
    (CannotAsk("Gerrit down"), TransientError),
    (NodeBusy("holds build 3"), TransientError),
    (GerritError("no such patch set", transient=False), PermanentError),
    (LabelRefused("Verified", 2, "restricted"), PermanentError),
    (ConfigError("gerrit.host: missing"), PermanentError),
    (RenderError("bad branch"), PermanentError),
    (OsloCheckError("no virtualenv"), PermanentError),
    (ArtefactError("wrong SHA-256"), PermanentError),
    (UnknownNode("no node 'x'"), PermanentError),
    (CommandTimeout("timed out"), ControlFlow),
    (CommandAborted("aborted"), ControlFlow),
])
def test_each_exception_is_on_exactly_one_branch(exc: Exception, branch: type) -> None:
    branches = [b for b in (TransientError, PermanentError, ControlFlow) if isinstance(exc, b)]
    assert branches == [branch]
    assert isinstance(exc, HypervCIError)


def test_a_timeout_or_an_abort_is_not_a_transport_error() -> None:
    # A node whose command timed out still answered: it must not be taken for dead.
    for exc in (CommandTimeout("x"), CommandAborted("x")):
        assert not isinstance(exc, ExecutorError)
    assert not isinstance(CommandAborted("x"), CommandTimeout)


def test_a_merge_conflict_is_a_result_not_an_error() -> None:
    class Change:
        number, patchset, branch = 1, 2, "master"

    conflict = MergeConflict(Change(), ["a.py"])  # type: ignore[arg-type]
    assert isinstance(conflict, ControlFlow) and not isinstance(conflict, InfraError)


def test_gerrit_errors_keep_their_transient_flag() -> None:
    down, gone = GerritError("reset"), GerritError("no such change", transient=False)
    assert type(down) is GerritUnavailable and down.transient
    assert type(gone) is GerritRejected and not gone.transient
    assert isinstance(gone, GerritError) and isinstance(down, GerritError)
    assert not LabelRefused("Verified", 1, "restricted").transient
    assert GerritRefused("bad key").transient
    refused = GerritError("gerrit review failed", exit_status=1, stderr="fatal: x",
                          transient=False)
    assert str(refused) == "gerrit review failed (exit status 1): fatal: x"


@pytest.mark.parametrize(("exc", "transient"), [
    (GerritError("connection reset"), True),
    (ExecutorError("unreachable"), True),
    (GerritError("no such patch set", transient=False), False),
    (ConfigError("bad"), False),
    (CommandTimeout("timed out"), False),  # control flow: nothing for the scheduler to retry
    (OperationalError("SELECT 1", {}, Exception("database is locked")), True),
    (ConnectionResetError("reset"), True),
    (paramiko.SSHException("banner"), True),
    (ValueError("no patch sets in the answer"), False),
    (KeyError("number"), False),
])
def test_the_scheduler_retries_only_what_is_transient(exc: Exception, transient: bool) -> None:
    assert is_transient(exc) is transient


@pytest.mark.parametrize(("exc", "verdict"), [
    (GerritError("gerrit review failed: EOFError"), Verdict.RETRY),
    (CannotAsk("cannot ask Gerrit: no such change 7"), Verdict.RETRY),
    (GerritError("query failed", transient=False), Verdict.FAIL_NOW),
    (LabelRefused("Verified", 2, "restricted"), Verdict.FAIL_NOW),
    # Not Gerrit's, but permanent all the same: resending cannot help.
    (ConfigError("gerrit.key_file: no such file"), Verdict.FAIL_NOW),
    (RuntimeError("a bug of ours"), Verdict.RETRY),
])
def test_the_reporter_gives_up_on_permanent_errors(exc: Exception, verdict: Verdict) -> None:
    assert classify_send_error(exc).verdict == verdict
