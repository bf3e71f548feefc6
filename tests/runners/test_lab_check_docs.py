"""docs/lab.md stays true: its worked example loads, and it names every check."""

from __future__ import annotations

import re
from pathlib import Path

from ci.config import load_config
from runners.lab_check import CHECKS

DOC = Path(__file__).resolve().parents[2] / "docs" / "lab.md"


def worked_example() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## A worked example"):]
    match = re.search(r"^```yaml\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert match is not None, "no yaml block in the worked example"
    return match.group(1)


def test_the_worked_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(worked_example(), encoding="utf-8")
    config = load_config(path)
    assert [s.name for s in config.lab_sets] == ["set-a", "set-b"]
    assert [p.name for p in config.parent_hosts] == ["hv-parent-1", "hv-parent-2"]
    assert all(n.provisioned for n in config.nodes)
    ranges = sorted(n.vlan_range for n in config.nodes if n.label == "devstack")
    assert ranges == ["1000:1499", "500:999"]


def test_every_check_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    for checks in CHECKS.values():
        for check in checks:
            assert f"`{check}`" in text, check
