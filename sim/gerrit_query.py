"""The subset of Gerrit's query language the simulated Gerrit understands.

Terms are ANDed (juxtaposed or with AND), OR and parentheses group them, a
leading `-` or NOT negates one; more than Gerrit's default 1024 leaf terms is
refused as Gerrit refuses it. Operators: `change:N|I...`, a plain
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


# Gerrit's own default for index.maxTerms (java/com/google/gerrit/index/IndexConfig.java,
# DEFAULT_MAX_TERMS = 1024); a query with more leaf terms is refused.
MAX_TERMS = 1024


def _tokens(text: str) -> list[str]:
    """shlex words, with parentheses split off the words they touch."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise QueryError(f"line 1:{len(text)} {exc}") from None
    tokens: list[str] = []
    for word in words:
        lead = len(word) - len(word.lstrip("("))
        body = word[lead:]
        trail = len(body) - len(body.rstrip(")"))
        tokens += ["("] * lead + ([body[:len(body) - trail]] if body[:len(body) - trail] else [])
        tokens += [")"] * trail
    return tokens


class _Parser:
    """Gerrit's grammar (java/com/google/gerrit/index/query/Query.g): OR binds
    loosest, then AND (written or implied by juxtaposition), then NOT or a
    leading `-`, then a parenthesised query or one `operator:value` term."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.at = 0
        self.terms = 0
        self.limit: int | None = None

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> str:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def parse(self) -> Predicate:
        pred = self.or_()
        if self.peek() is not None:
            raise QueryError(f"line 1:{self.at} extraneous input '{self.peek()}'")
        return pred

    def or_(self) -> Predicate:
        preds = [self.and_()]
        while self.peek() == "OR":
            self.take()
            preds.append(self.and_())
        return preds[0] if len(preds) == 1 else (lambda c: any(p(c) for p in preds))

    def and_(self) -> Predicate:
        preds = [p for p in [self.not_()] if p is not None]
        while self.peek() not in (None, "OR", ")"):
            if self.peek() == "AND":
                self.take()
            pred = self.not_()
            if pred is not None:
                preds.append(pred)
        if not preds:  # only limit: terms
            return lambda c: True
        return preds[0] if len(preds) == 1 else (lambda c: all(p(c) for p in preds))

    def not_(self) -> Predicate | None:
        token = self.peek()
        if token is None or token in ("AND", "OR", ")"):
            raise QueryError(f"line 1:{self.at} no viable alternative at input '{token}'")
        if token == "NOT":
            self.take()
            return _negated(self.base())
        if token.startswith("-") and len(token) > 1:
            self.tokens[self.at] = token[1:]
            return _negated(self.base())
        return self.base()

    def base(self) -> Predicate | None:
        token = self.take()
        if token == "(":
            pred = self.or_()
            if self.peek() != ")":
                raise QueryError(f"line 1:{self.at} missing ')' at '{self.peek()}'")
            self.take()
            return pred
        op, sep, value = token.partition(":")
        if sep and op == "limit":
            if not value.isdigit() or int(value) < 1:
                raise QueryError(f"Invalid limit: {value}")
            # cmd-query.txt: with several limit: operators the smallest wins.
            self.limit = int(value) if self.limit is None else min(self.limit, int(value))
            return None
        self.terms += 1
        if not sep:
            if re.fullmatch(r"[0-9]+|I[0-9a-f]{40}", token):
                return _term("change", token)
            word = token.casefold()
            return lambda c: word in c["commitMessage"].casefold()
        return _term(op, value)


def parse_query(text: str) -> tuple[Predicate, int | None]:
    """A predicate for `text` and the `limit:N` it names (None if none)."""
    tokens = _tokens(text)
    if not tokens:
        raise QueryError("query is empty")
    parser = _Parser(tokens)
    predicate = parser.parse()
    if parser.terms > MAX_TERMS:
        # QueryProcessor's check of the leaf count, with its message.
        raise QueryError(f"too many terms in query: {parser.terms} terms (max = {MAX_TERMS})")
    return predicate, parser.limit


def _negated(inner: Predicate | None) -> Predicate | None:
    """NOT of a term (None: a term that selects nothing to negate, e.g. limit:)."""
    if inner is None:
        return None
    return lambda c: not inner(c)
