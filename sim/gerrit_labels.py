"""Gerrit's label rules in the simulated server: which labels exist and who may vote what.

A review that sets a label runs, in Gerrit 3.x, through `PostReview.checkLabels`
(java/com/google/gerrit/server/restapi/change/PostReview.java), for every label
in name order (the SSH `ReviewCommand` builds the votes in a TreeMap):

- a label the project does not define: refused with `label "Foo" is not a
  configured label` when the server sets `change.strictLabels`, else dropped
  silently (`change.strictLabels` defaults to false, config-gerrit.txt);
- 0 is always permitted (it removes a vote);
- a value the label does not define (Verified=2 on a -1..+1 label): refused
  with `label "Verified": 2 is not a valid value` under strictLabels, else dropped;
- a defined value outside the range the account was granted (`label-Verified =
  -1..+1 group CI` in project.config, access-control.txt): always refused with
  `Applying label "Code-Review": 2 is restricted` (an AuthException).

A new vote on a closed change is refused by `PostReviewOp.validatePostSubmitLabels`
(java/com/google/gerrit/server/restapi/change/PostReviewOp.java): `change is
closed` on an abandoned change; on a merged one, `Voting on labels disallowed
after submit: Verified` for a label without `allowPostSubmit` (only
Code-Review has it here, as in Gerrit's default label).

Any refusal fails the whole review: nothing is recorded, the message is lost too.
Label names match case-insensitively (`LabelTypes.byLabel` lower-cases both).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

Range = tuple[int, int]

# The labels the simulated projects define, as on review.opendev.org.
LABELS: dict[str, Range] = {"Code-Review": (-2, 2), "Verified": (-1, 1), "Workflow": (-1, 1)}
# What an account may vote unless granted otherwise: what a third-party CI
# account gets on the projects it tests.
DEFAULT_GRANT: dict[str, Range] = {"Verified": (-1, 1)}
# Labels that may still be voted on after submit (`allowPostSubmit`).
POST_SUBMIT = frozenset({"Code-Review"})

_GRANT_RE = re.compile(r"^\s*([^=\s,]+)\s*=\s*([+-]?\d+)\s*\.\.\s*([+-]?\d+)\s*$")


class LabelRejected(Exception):
    """PostReview refused a vote; the text is Gerrit's own.

    `http_status` is what the REST API answers for it (RestApiServlet maps
    AuthException to 403, BadRequestException to 400, ResourceConflictException
    to 409); over SSH every kind prints as `error: fatal: <text>`.
    """

    def __init__(self, message: str, http_status: int = 400) -> None:
        super().__init__(message)
        self.http_status = http_status


def format_value(value: int) -> str:
    """Gerrit's `LabelValue.formatValue`: -1, " 0", +1."""
    if value < 0:
        return str(value)
    return " 0" if value == 0 else f"+{value}"


def parse_grant(text: str) -> tuple[str, dict[str, Range]]:
    """`ACCOUNT:LABEL=MIN..MAX[,LABEL=MIN..MAX...]` (nothing after the colon: no label)."""
    account, colon, rest = text.partition(":")
    if not colon or not account.strip():
        raise ValueError(f"{text!r} is not ACCOUNT:LABEL=MIN..MAX[,LABEL=MIN..MAX]")
    grants: dict[str, Range] = {}
    for item in filter(str.strip, rest.split(",")):
        match = _GRANT_RE.match(item)
        if match is None:
            raise ValueError(f"{item.strip()!r} is not LABEL=MIN..MAX (e.g. Verified=-1..+1)")
        low, high = int(match[2]), int(match[3])
        if low > high:
            # Gerrit refuses such a permission in project.config too.
            raise ValueError(f"{item.strip()!r}: the minimum is above the maximum")
        grants[match[1]] = (low, high)
    return account.strip(), grants


@dataclass
class LabelPolicy:
    """The labels the projects define, each account's grants, and `change.strictLabels`."""

    labels: dict[str, Range] = field(default_factory=lambda: dict(LABELS))
    grants: dict[str, dict[str, Range]] = field(default_factory=dict)
    strict: bool = False

    def defined(self, name: str) -> tuple[str, Range] | None:
        """(canonical name, range) of a label, matched case-insensitively."""
        for canonical, span in self.labels.items():
            if canonical.lower() == name.lower():
                return canonical, span
        return None

    def granted(self, account: str, label: str) -> Range | None:
        """The range `account` may vote on `label`, or None."""
        grant = self.grants.get(account, DEFAULT_GRANT)
        return next((span for name, span in grant.items() if name.lower() == label.lower()),
                    None)

    def check(self, account: str, votes: dict[str, int]) -> dict[str, int]:
        """The votes that apply, by canonical name; LabelRejected if the review must fail."""
        applied: dict[str, int] = {}
        for name in sorted(votes):
            value = votes[name]
            found = self.defined(name)
            if found is None:
                if self.strict:
                    raise LabelRejected(f'label "{name}" is not a configured label')
                continue
            canonical, (low, high) = found
            if value == 0:
                applied[canonical] = 0
                continue
            if not low <= value <= high:
                if self.strict:
                    raise LabelRejected(f'label "{name}": {value} is not a valid value')
                continue
            span = self.granted(account, canonical)
            if span is None or not span[0] <= value <= span[1]:
                raise LabelRejected(f'Applying label "{canonical}": {value} is restricted',
                                    http_status=403)
            applied[canonical] = value
        return applied

    def check_closed(self, status: str, old: dict[str, int], applied: dict[str, int]) -> None:
        """Refuse a changed vote on a closed change, as validatePostSubmitLabels does."""
        if status == "NEW":
            return
        changed = sorted(name for name, value in applied.items() if old.get(name, 0) != value)
        if not changed:
            return  # a comment alone (or the same votes again) is fine on a closed change
        if status != "MERGED":
            raise LabelRejected("change is closed", http_status=409)
        disallowed = [name for name in changed if name not in POST_SUBMIT]
        if disallowed:
            raise LabelRejected("Voting on labels disallowed after submit: "
                                + ", ".join(disallowed), http_status=409)

    def to_json(self) -> dict[str, object]:
        return {"labels": {k: list(v) for k, v in self.labels.items()},
                "grants": {a: {k: list(v) for k, v in g.items()} for a, g in self.grants.items()},
                "strict": self.strict}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> LabelPolicy:
        def ranges(obj: object) -> dict[str, Range]:
            assert isinstance(obj, dict)
            return {str(k): (int(v[0]), int(v[1])) for k, v in obj.items()}

        grants = data.get("grants") or {}
        assert isinstance(grants, dict)
        return cls(labels=ranges(data.get("labels") or LABELS),
                   grants={str(a): ranges(g) for a, g in grants.items()},
                   strict=bool(data.get("strict", False)))
