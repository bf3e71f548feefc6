"""The subset of Gerrit's query language the simulated Gerrit understands.

Terms are ANDed; a leading `-` negates one. Operators: `change:N|I...`, a plain
change number or Change-Id, `status:`/`is:` open|closed|new|merged|abandoned,
`project:`, `branch:`, `owner:`, `commit:`, `age:` (e.g. `-age:2h`),
`after:`/`since:`/`before:`/`until:` ("YYYY-MM-DD[ HH:MM:SS]", UTC) and
`limit:N`; a bare word searches subjects and commit messages. Anything else is
refused the way Gerrit refuses it (`Unsupported operator`).
"""

from __future__ import annotations

import re
import shlex
import time
from calendar import timegm
from collections.abc import Callable
from typing import Any

Predicate = Callable[[dict[str, Any]], bool]

_AGE_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400,
              "day": 86400, "w": 604800, "week": 604800}
_STATUS = {"open": {"NEW"}, "new": {"NEW"}, "pending": {"NEW"}, "closed": {"MERGED", "ABANDONED"},
           "merged": {"MERGED"}, "abandoned": {"ABANDONED"}}


class QueryError(Exception):
    """A query Gerrit would answer with `{"type":"error","message":...}`."""


def _timestamp(value: str) -> int:
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return timegm(time.strptime(value, fmt))
        except ValueError:
            continue
    raise QueryError(f"Invalid date: {value}")


def _age(value: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([a-z]+?)s?", value)
    if not m or m.group(2) not in _AGE_UNITS:
        raise QueryError(f"Invalid age: {value}")
    return int(m.group(1)) * _AGE_UNITS[m.group(2)]


def _term(op: str, value: str) -> Predicate:
    """One operator:value term as a predicate on a stored change."""
    if op == "change":
        if value.isdigit():
            return lambda c: c["number"] == int(value)
        return lambda c: c["id"] == value
    if op in ("status", "is"):
        if value not in _STATUS:
            raise QueryError(f"Unrecognized value: {value}")
        return lambda c: c["status"] in _STATUS[value]
    if op == "project":
        return lambda c: c["project"] == value
    if op == "branch":
        return lambda c: c["branch"] == value.removeprefix("refs/heads/")
    if op == "owner":
        return lambda c: value in (c["owner"]["username"], c["owner"]["name"],
                                   c["owner"]["email"])
    if op == "commit":
        return lambda c: any(ps["revision"].startswith(value.lower()) for ps in c["patchSets"])
    if op == "age":
        seconds = _age(value)
        return lambda c: c["lastUpdated"] <= time.time() - seconds
    if op in ("after", "since"):
        when = _timestamp(value)
        return lambda c: c["lastUpdated"] >= when
    if op in ("before", "until"):
        when = _timestamp(value)
        return lambda c: c["lastUpdated"] <= when
    raise QueryError(f"Unsupported operator {op}:{value}")


def parse_query(text: str) -> tuple[Predicate, int | None]:
    """A predicate for `text` and the `limit:N` it names (None if none)."""
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise QueryError(f"line 1:{len(text)} {exc}") from None
    if not tokens:
        raise QueryError("query is empty")
    predicates: list[Predicate] = []
    limit: int | None = None
    for token in tokens:
        if token == "AND":
            continue
        if token in ("OR", "NOT", "(", ")"):
            raise QueryError(f"the simulated Gerrit does not support {token}")
        negate = token.startswith("-")
        token = token.removeprefix("-")
        op, sep, value = token.partition(":")
        if not sep:
            if re.fullmatch(r"[0-9]+|I[0-9a-f]{40}", token):
                pred = _term("change", token)
            else:
                word = token.casefold()
                pred = (lambda w: lambda c: w in c["commitMessage"].casefold())(word)
        elif op == "limit" and not negate:
            if not value.isdigit() or int(value) < 1:
                raise QueryError(f"Invalid limit: {value}")
            limit = int(value)
            continue
        else:
            pred = _term(op, value)
        predicates.append((lambda p: lambda c: not p(c))(pred) if negate else pred)
    return (lambda c: all(p(c) for p in predicates)), limit
