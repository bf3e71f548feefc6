"""ci/build_history.py: filters and keyset pages on both engines; cursors and
parameters a user can forge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from ci.build_history import (
    BuildFilter,
    Cursor,
    list_builds,
    nodes_of_builds,
    parse_filter,
    parse_when,
)
from ci.models import BuildState
from tests.history_seed import HOSTILE_NODE, HistoryWorld, seed_history


@pytest.fixture
def history(sessions: sessionmaker[Session]) -> HistoryWorld:
    return seed_history(sessions)


def ids(sessions: sessionmaker[Session], where: BuildFilter) -> list[int]:
    with sessions() as s:
        return [b.id for b in list_builds(s, where, limit=100).builds]


def test_pages_walk_every_build_once_newest_first(sessions: sessionmaker[Session],
                                                  history: HistoryWorld) -> None:
    b = history.builds
    newest_first = [b["f"], b["e"], b["d"], b["b2"], b["c"], b["b"], b["a"]]
    seen: list[int] = []
    after = None
    with sessions() as s:
        for _ in range(10):
            page = list_builds(s, BuildFilter(), after, limit=3)
            seen += [x.id for x in page.builds]
            assert all(x.patchset.change.number in (2001, 2002)  # loaded with the page
                       for x in page.builds if x.patchset is not None)
            if page.next_cursor is None:
                break
            # The cursor survives its text form (it travels in a URL).
            after = Cursor.decode(page.next_cursor.encode())
    assert seen == newest_first
    with sessions() as s:  # the last page says so
        assert list_builds(s, BuildFilter(), None, limit=7).next_cursor is None


def test_each_filter(sessions: sessionmaker[Session], history: HistoryWorld) -> None:
    b = history.builds
    assert ids(sessions, BuildFilter(project="openstack/nova")) == [b["f"], b["e"], b["d"]]
    assert ids(sessions, BuildFilter(branch="master")) == [b["b2"], b["c"], b["b"], b["a"]]
    assert ids(sessions, BuildFilter(job="hyperv-extra")) == [b["f"], b["c"]]
    assert ids(sessions, BuildFilter(result=BuildState.SUCCEEDED)) == [b["d"]]
    assert ids(sessions, BuildFilter(change=2001, job="hyperv-local")) == [b["b2"], b["b"],
                                                                           b["a"]]
    assert ids(sessions, BuildFilter(node=HOSTILE_NODE)) == [b["d"], b["b"]]
    assert ids(sessions, BuildFilter(node="no-such-node")) == []
    since = history.now - timedelta(days=2, hours=1)
    until = history.now - timedelta(hours=2)
    assert ids(sessions, BuildFilter(since=since, until=until)) == [b["e"], b["d"], b["b2"],
                                                                    b["c"], b["b"]]


def test_nodes_of_a_page(sessions: sessionmaker[Session], history: HistoryWorld) -> None:
    with sessions() as s:
        nodes = nodes_of_builds(s, [history.builds["b"], history.builds["f"]])
    assert nodes == {history.builds["b"]: sorted(["devstack-1", HOSTILE_NODE])}


@pytest.mark.parametrize("forged", ["", "zzz", "bm90IGEgY3Vyc29y",  # "not a cursor"
                                    "MjAyNi0wMS0wMXwx",  # a naive time: "2026-01-01|1"
                                    "w7w"])  # not UTF-8
def test_a_forged_cursor_is_refused(forged: str) -> None:
    with pytest.raises(ValueError, match="invalid cursor"):
        Cursor.decode(forged)


def test_parse_filter() -> None:
    parsed = parse_filter({"project": " openstack/nova ", "result": "failed", "change": "42",
                           "since": "2026-11-01", "until": "2026-11-30", "job": ""})
    assert parsed == BuildFilter(project="openstack/nova", result=BuildState.FAILED, change=42,
                                 since=datetime(2026, 11, 1, tzinfo=UTC),
                                 until=datetime(2026, 12, 1, tzinfo=UTC))  # the whole last day
    assert parse_filter(parsed.as_params()) == parsed  # the next page's link keeps the filter
    for bad, message in [({"result": "won"}, "unknown result"),
                         ({"change": "12a"}, "change number"),
                         ({"change": "9" * 13}, "change number"),
                         ({"since": "yesterday"}, "not a date")]:
        with pytest.raises(ValueError, match=message):
            parse_filter(bad)
    # Another zone's time is the same moment in UTC (SQLite compares stored text).
    assert parse_when("2026-11-01T02:00:00+02:00") == datetime(2026, 11, 1, tzinfo=UTC)
