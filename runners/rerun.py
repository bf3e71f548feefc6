"""Re-running failed tempest tests: which to run again, and what the re-runs prove.

The Hyper-V CI's nodes are real machines under load: a test may fail once
for reasons that have nothing to do with the change (a slow boot, a DHCP
lease that came late). The job re-runs the failed tests, serially and only
those (`tempest run --load-list`), and a test that passes on a re-run is
recorded as flaky: visible everywhere results are shown, but not a failure.
A test that fails on every re-run is failed. Pure functions; the runner does
the I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from runners.subunit import FLAKY, TestOutcome

_FAILING = frozenset({"fail", "uxsuccess"})
# What proves a test can pass: it ran and met its expectation.
_PASSING = frozenset({"success", "xfail"})
_RULE = "-" * 40


def rerun_ids(outcomes: Sequence[TestOutcome]) -> list[str]:
    """The failed tests a re-run should load (each id once, in stream order).

    A class-level failure (`setUpClass (tempest.api.Foo)`) is not a loadable
    test id: it is listed like any other and simply matches nothing, so it
    stays failed rather than passing by omission.
    """
    return list(dict.fromkeys(t.test_id for t in outcomes if t.status in _FAILING))


def load_list(ids: Sequence[str]) -> bytes:
    """The `--load-list` file: one test id a line, UTF-8."""
    return "".join(f"{test_id}\n" for test_id in ids).encode("utf-8")


def merge_rerun(outcomes: Sequence[TestOutcome], rerun: Sequence[TestOutcome],
                attempt: int) -> list[TestOutcome]:
    """`outcomes` with what re-run number `attempt` (1-based) showed about its failures.

    A failure that passed on the re-run becomes FLAKY and keeps its first
    traceback (why it failed is what an operator wants to see). One that
    failed again stays failed, with the re-run's traceback added. A test the
    re-run did not report (it crashed, or the id matched nothing) stays as it
    was. A test the re-run decided carries its number (`attempt`). Tests only
    the re-run reported are ignored: they were not asked for.
    """
    again = {t.test_id: t for t in rerun}
    merged = []
    for test in outcomes:
        second = again.get(test.test_id)
        if test.status not in _FAILING or second is None:
            merged.append(test)
        elif second.status in _PASSING:
            note = f"passed when re-run (re-run {attempt}); failed first with:"
            merged.append(dataclasses.replace(test, status=FLAKY, attempt=attempt,
                                              details=f"{note}\n{test.details}".rstrip()))
        else:
            extra = second.details.rstrip() or "(the re-run's stream carried no traceback)"
            details = (f"{test.details.rstrip()}\n{_RULE}\nre-run {attempt}: {second.status}\n"
                       f"{extra}")
            merged.append(dataclasses.replace(test, attempt=attempt,
                                              details=details.lstrip("\n")))
    return merged
