"""The simulated Gerrit's events carry what real Gerrit's always carry.

For each event type the simulator emits, every key that all recorded real
samples of that type share (at the top level and in the nested objects) must
be in the simulator's event too; samples are tests/fixtures/gerrit, copied
from public projects (see their SOURCES.md).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from sim.gerrit_state import GerritState

FIXTURES = Path(__file__).parent.parent / "fixtures" / "gerrit"
NESTED = ("change", "patchSet", "author", "uploader", "submitter", "abandoner", "refUpdate")
# Present in real events only when set on the change.
OPTIONAL = {("change", "topic")}


def real_events() -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(FIXTURES.glob("events__*")):
        text = path.read_text(encoding="utf-8")
        try:
            whole: Any = json.loads(text)
            candidates = whole.get("events", [whole]) if isinstance(whole, dict) else whole
        except json.JSONDecodeError:
            candidates = []
            for line in text.splitlines():
                try:
                    candidates.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # samples saved verbatim, some not JSON (see test_events.py)
        for event in candidates:
            if isinstance(event, dict) and isinstance(event.get("type"), str):
                found[event["type"]].append(event)
    return found


@pytest.fixture(scope="module")
def sim_events(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    state = GerritState(tmp_path_factory.mktemp("gerrit"))
    lines: list[str] = []
    state.subscribe(lines.append)
    first = state.push("openstack/nova", files={"nova/virt/hyperv/vmops.py": "x\n"},
                       subject="Hyper-V: 修复", owner="Zoë Ünal")
    state.comment(int(first["change"]), 1, "recheck", author="张伟")
    second = state.push("openstack/nova", files={"b.py": "x\n"}, subject="abandon me")
    state.abandon(int(second["change"]))
    third = state.push("openstack/nova", files={"c.py": "x\n"}, subject="merge me")
    state.merge(int(third["change"]))
    events: dict[str, dict[str, Any]] = {}
    for line in lines:
        event = json.loads(line)
        events.setdefault(event["type"], event)
    return events


REAL = real_events()


@pytest.mark.parametrize("event_type", ["patchset-created", "comment-added", "change-abandoned",
                                        "change-merged", "ref-updated"])
def test_sim_events_have_every_key_real_gerrit_always_sends(
        sim_events: dict[str, dict[str, Any]], event_type: str) -> None:
    samples = REAL[event_type]
    assert samples, f"no recorded {event_type} sample"
    ours = sim_events[event_type]
    for part in (None, *NESTED):
        shapes = [set(s if part is None else s.get(part) or {}) for s in samples
                  if part is None or isinstance(s.get(part), dict)]
        if not shapes:
            continue
        always = set.intersection(*shapes) - {k for p, k in OPTIONAL if p == part}
        have = set(ours if part is None else ours.get(part) or {})
        assert always <= have, (event_type, part, sorted(always - have))
