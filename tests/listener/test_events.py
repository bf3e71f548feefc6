"""listener.events: every real sample parses, across Gerrit eras and transports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from ci.queue import ChangeInfo
from listener.events import (
    ChangeAbandoned,
    ChangeMerged,
    ChangeRestored,
    CommentAdded,
    DroppedOutput,
    OtherEvent,
    ParseError,
    PatchsetCreated,
    dedup_key,
    event_from_dict,
    parse_event,
    peek,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "gerrit"
SAMPLES = sorted(FIXTURES.glob("events__*"))
# Saved verbatim from their sources and not strict JSON (see gerrit-samples/SOURCES.md).
NOT_JSON = {"events__pygerrit__invalid-json.txt",
            "events__gerrit-events__DeserializeHashtagsChangedTest.json"}
TYPES = {
    "patchset-created": PatchsetCreated,
    "comment-added": CommentAdded,
    "change-abandoned": ChangeAbandoned,
    "change-merged": ChangeMerged,
    "change-restored": ChangeRestored,
    "dropped-output": DroppedOutput,
}


def sample_lines(path: Path) -> list[str]:
    """The events of one sample file, one JSON text each (files come in 3 shapes)."""
    text = path.read_text(encoding="utf-8")
    try:
        whole: Any = json.loads(text)
    except json.JSONDecodeError:
        return [line for line in text.splitlines() if line.strip()]
    if isinstance(whole, dict) and "events" in whole:  # elastic-recheck's wrapper
        whole = whole["events"]
    items = whole if isinstance(whole, list) else [whole]
    return [json.dumps(item, ensure_ascii=False) for item in items]


def test_fixtures_were_copied() -> None:
    assert len(SAMPLES) >= 25


@pytest.mark.parametrize("path", [p for p in SAMPLES if p.name not in NOT_JSON],
                         ids=lambda p: p.name)
def test_every_sample_event_parses(path: Path) -> None:
    lines = sample_lines(path)
    assert lines
    for line in lines:
        for raw in (line, line.encode("utf-8")):
            event = parse_event(raw)
            assert not isinstance(event, ParseError), event
            assert isinstance(event, TYPES.get(event.type, OtherEvent))
            if isinstance(event, PatchsetCreated | CommentAdded) and "patchSet" in event.data:
                assert event.change is not None
                assert event.change.number > 0 and event.change.patchset > 0


@pytest.mark.parametrize("name", sorted(NOT_JSON))
def test_invalid_samples_give_parse_errors(name: str) -> None:
    text = (FIXTURES / name).read_text(encoding="utf-8")
    result = parse_event(text)
    assert isinstance(result, ParseError)
    assert result.type == "invalid"
    assert result.line == text


def test_invalid_json_bytes_and_non_objects() -> None:
    assert isinstance(parse_event(b"{\"type\": \"patchset-"), ParseError)
    assert isinstance(parse_event(b"\xff\xfe"), ParseError)
    assert isinstance(parse_event(""), ParseError)
    err = parse_event("[1, 2]")
    assert isinstance(err, ParseError) and "list" in err.error


def _patchset_created(number: Any, ps: Any, project: Any) -> dict[str, Any]:
    return {
        "type": "patchset-created",
        "change": {"project": project, "branch": "master", "number": number,
                   "subject": "Hyper-V: 修复 vmops 的 unicode 问题",
                   "owner": {"name": "Jürgen Öst", "email": "j@example.org"}},
        "patchSet": {"number": ps, "revision": "a" * 40, "ref": "refs/changes/21/4321/2",
                     "uploader": {"name": "张伟", "username": "zhang"}},
        "uploader": {"name": "张伟", "username": "zhang"},
        "eventCreatedOn": 1700000000,
    }


@pytest.mark.parametrize(("number", "ps"), [("4321", "2"), (4321, 2)])
@pytest.mark.parametrize("project", ["openstack/nova", {"name": "openstack/nova"}])
def test_numbers_as_strings_or_ints_and_project_forms(number: Any, ps: Any,
                                                      project: Any) -> None:
    event = parse_event(orjson.dumps(_patchset_created(number, ps, project)))
    assert isinstance(event, PatchsetCreated)
    assert event.number == 4321
    assert event.project == "openstack/nova"
    assert event.created_on == 1700000000
    assert event.source == "stream"
    assert event.change == ChangeInfo(
        number=4321, project="openstack/nova", branch="master", patchset=2,
        subject="Hyper-V: 修复 vmops 的 unicode 问题", owner_name="Jürgen Öst",
        owner_email="j@example.org", url="", status="NEW", revision="a" * 40,
        ref="refs/changes/21/4321/2", uploader_name="张伟")
    assert event.uploader.username == "zhang"


def test_missing_fields_are_tolerated() -> None:
    event = parse_event('{"type": "patchset-created"}')
    assert isinstance(event, PatchsetCreated)
    assert event.change is None and event.number is None and event.created_on is None
    event = parse_event('{"type": "change-abandoned", "change": {"number": "12"}}')
    assert isinstance(event, ChangeAbandoned)
    assert event.number == 12 and event.change is None
    event = parse_event('{"type": "patchset-created", "change": {"number": "x1"},'
                        ' "patchSet": {"number": null}}')
    assert isinstance(event, PatchsetCreated) and event.number is None


def test_top_level_project_and_ref_name_fill_gaps() -> None:
    event = event_from_dict({"type": "change-deleted", "change": {"number": 3},
                             "project": {"name": "p"}, "refName": "refs/heads/stable/2024.1"})
    assert isinstance(event, OtherEvent)
    assert (event.project, event.branch) == ("p", "stable/2024.1")


def test_comment_added_approvals_are_numbers() -> None:
    path = FIXTURES / "events__gerritbot-rs__gerritbot_src_format__EVENT_JSON.json"
    event = parse_event(path.read_bytes())
    assert isinstance(event, CommentAdded)
    assert event.author.username == "approver"
    assert event.comment.startswith("Patch Set 1: Code-Review+2")
    [approval] = event.approvals
    assert (approval.label, approval.value, approval.old_value) == ("Code-Review", 2, -1)


def test_unknown_type_is_other_event() -> None:
    event = parse_event(FIXTURES.joinpath("events__pygerrit__unhandled-event.txt").read_text())
    assert isinstance(event, OtherEvent)
    assert event.type == "this-event-is-not-handled"
    assert isinstance(parse_event('{"no": "type"}'), OtherEvent)


def test_dropped_output_and_catch_up_marker() -> None:
    assert isinstance(parse_event('{"type":"dropped-output"}'), DroppedOutput)
    data = _patchset_created(1, 1, "p") | {"source": "catch-up"}
    event = parse_event(orjson.dumps(data))
    assert event.source == "catch-up"


def test_dedup_key() -> None:
    a = parse_event(orjson.dumps(_patchset_created("4321", "2", "p")))
    b = parse_event(orjson.dumps(_patchset_created(4321, 2, {"name": "p"})))
    assert isinstance(a, PatchsetCreated) and isinstance(b, PatchsetCreated)
    assert dedup_key(a) == dedup_key(b) == ("patchset-created", 4321, 2, 1700000000, "zhang")
    later = parse_event(orjson.dumps(_patchset_created(4321, 2, "p") | {"eventCreatedOn": 1}))
    assert isinstance(later, PatchsetCreated)
    assert dedup_key(later) != dedup_key(a)
    # Two ref-updated of the same second are two events: never de-duplicated.
    ref = parse_event('{"type": "ref-updated", "eventCreatedOn": 5}')
    assert isinstance(ref, OtherEvent) and dedup_key(ref) is None
    assert dedup_key(DroppedOutput(type="dropped-output")) is None


# Shapes the hot path's `peek` takes as they are (Gerrit 2.14+) and the ones it
# hands to the tolerant helpers: both must read what the typed parse reads.
_ODD_SHAPES: list[dict[str, Any]] = [
    {"type": "patchset-created", "eventCreatedOn": "1700000000",
     "change": {"number": "42"}, "patchSet": {"number": " 3 "},
     "uploader": {"username": "", "name": "Zoë Ñúñez"}},
    {"type": "comment-added", "eventCreatedOn": True, "change": {"number": 42.0},
     "patchSet": {"number": None}, "author": {"username": {"name": "nested"}},
     "comment": 17, "source": ""},
    {"type": "change-merged", "change": "not a dict", "patchSet": [], "submitter": None,
     "source": {"name": "catch-up"}},
    {"type": "", "change": {"number": 7}, "patchSet": {"number": 1}, "restorer": []},
    {"type": {"name": "ref-updated"}, "eventCreatedOn": 1.5e9},
    {"type": "dropped-output", "eventCreatedOn": "x"},
    {"type": "comment-added", "change": {"number": 1}, "patchSet": {"number": 2},
     "author": {"username": "zoë", "name": "Zoë"}, "comment": "recheck 👍",
     "eventCreatedOn": 1700000000},
]


@pytest.mark.parametrize("data", _ODD_SHAPES, ids=lambda d: str(d.get("type"))[:20])
def test_peek_reads_every_shape_as_the_typed_parse_does(data: dict[str, Any]) -> None:
    seen = peek(data)
    typed = event_from_dict(data)
    assert (seen.type, seen.created_on, seen.source) == (typed.type, typed.created_on,
                                                         typed.source)
    key = dedup_key(typed)
    light = None if seen.number is None or not seen.is_change_event else (
        seen.type, seen.number, seen.patchset, seen.created_on, seen.actor)
    assert light == key
    if isinstance(typed, CommentAdded):
        assert seen.comment == typed.comment
        assert seen.author == (typed.author.username or typed.author.name)
