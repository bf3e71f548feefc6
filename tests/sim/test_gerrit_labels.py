"""Gerrit's label rules as the simulated server applies them (pure)."""

from __future__ import annotations

import pytest

from sim.gerrit_labels import LabelPolicy, LabelRejected, format_value, parse_grant


def test_parse_grant() -> None:
    assert parse_grant("hyperv-ci:Verified=-1..+1, Code-Review=-2..2") == (
        "hyperv-ci", {"Verified": (-1, 1), "Code-Review": (-2, 2)})
    assert parse_grant("zoë:") == ("zoë", {})
    for bad in ("Verified=-1..+1", "ci:Verified=1", "ci:Verified=1..-1", ":Verified=0..1"):
        with pytest.raises(ValueError):
            parse_grant(bad)


def test_format_value_is_gerrits() -> None:
    assert [format_value(v) for v in (-2, 0, 1)] == ["-2", " 0", "+1"]


def test_zero_is_always_permitted_and_the_default_grant_is_verified_only() -> None:
    policy = LabelPolicy()
    assert policy.check("anyone", {"Code-Review": 0, "verified": -1}) == {
        "Code-Review": 0, "Verified": -1}
    with pytest.raises(LabelRejected, match='"Workflow": 1 is restricted'):
        policy.check("anyone", {"Workflow": 1})


def test_labels_are_checked_in_name_order() -> None:
    # ReviewCommand's votes are a TreeMap: the first refusal in name order is reported.
    with pytest.raises(LabelRejected, match="Code-Review"):
        LabelPolicy(grants={"ci": {}}).check("ci", {"Workflow": 1, "Code-Review": 1})
