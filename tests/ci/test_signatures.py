"""Known-failure signatures: loading (validated, errors name the signature) and matching."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import yaml

from ci.config import ConfigError, load_config
from ci.signatures import (
    FailedTest,
    load_signatures,
    match_failures,
    parse_signatures,
)

ROOT = Path(__file__).resolve().parents[2]
BUG = "https://bugs.launchpad.net/nova/+bug/1"
RESIZE = ("tempest.api.compute.servers.test_server_actions.ServerActionsTestJSON."
          "test_resize_server_confirm")
TRACE = ("Traceback (most recent call last):\n"
         "BuildErrorException: 实例 tempest-服务器 could not be scheduled")


def test_a_bad_regex_is_a_config_error_naming_the_signature() -> None:
    data = [{"id": "good", "bug": BUG, "test": "test_resize"},
            {"id": "ungültig-regex", "bug": BUG, "traceback": "(unclosed"}]
    with pytest.raises(ConfigError) as caught:
        parse_signatures(data, "sigs.yaml")
    message = str(caught.value)
    assert "signature 'ungültig-regex'" in message
    assert "traceback" in message and "missing )" in message


def test_python_only_syntax_is_refused_rather_than_run_with_backtracking() -> None:
    # RE2 has no backreferences: a pattern needing them would be a backtracking one.
    with pytest.raises(ConfigError, match=r"signature 'backref'.*pattern"):
        parse_signatures([{"id": "backref", "bug": BUG, "file": "a.log",
                           "pattern": r"(a+)\1"}], "s")


@pytest.mark.parametrize(("entry", "words"), [
    ({"id": "x", "bug": "not a url", "test": "a"}, "bug"),
    ({"id": "x", "bug": BUG}, "give `file` and `pattern`"),
    ({"id": "x", "bug": BUG, "file": "a.log"}, "go together"),
    ({"id": "x", "bug": BUG, "file": "../etc/passwd", "pattern": "a"}, "file"),
    ({"id": "x", "bug": BUG, "file": "/etc/passwd", "pattern": "a"}, "file"),
    ({"id": "x", "bug": BUG, "test": "a", "query": "b"}, "query"),
    ({"id": "bad id!", "bug": BUG, "test": "a"}, "id"),
])
def test_invalid_entries_are_refused(entry: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        parse_signatures([entry], "s")


def test_duplicate_ids_are_refused() -> None:
    entry = {"id": "twice", "bug": BUG, "test": "a"}
    with pytest.raises(ConfigError, match="'twice': the id is used twice"):
        parse_signatures([entry, entry], "s")


def test_the_config_loads_and_validates_its_signature_file(tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "etc" / "demo.yaml").read_text(encoding="utf-8"))
    raw["verdict"] = {"signatures": "sigs.yaml"}
    (tmp_path / "ci.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    (tmp_path / "sigs.yaml").write_text(yaml.safe_dump({"signatures": [
        {"id": "resize", "bug": BUG, "test": "test_resize"}]}), encoding="utf-8")
    config = load_config(tmp_path / "ci.yaml")
    assert [s.id for s in config.verdict.known_failures] == ["resize"]
    # A config copy keeps them (the demo and tests copy configs with model_copy).
    assert config.model_copy(update={"jobs": config.jobs}).verdict.known_failures
    (tmp_path / "sigs.yaml").write_text(yaml.safe_dump([
        {"id": "resize", "bug": BUG, "test": "test_resize("}]), encoding="utf-8")
    with pytest.raises(ConfigError, match="signature 'resize'"):
        load_config(tmp_path / "ci.yaml")
    (tmp_path / "sigs.yaml").unlink()
    with pytest.raises(ConfigError, match=r"sigs\.yaml"):
        load_config(tmp_path / "ci.yaml")


def test_test_and_traceback_rules_match_failed_tests_with_non_ascii() -> None:
    sigs = parse_signatures([
        {"id": "sched", "bug": BUG, "test": "test_resize", "traceback": "实例 .* scheduled"},
        {"id": "other", "bug": BUG, "test": "test_shelve"},
    ], "s")
    matches = match_failures(sigs, [FailedTest(RESIZE, TRACE), FailedTest("x.test_list", TRACE)],
                             None)
    assert [(m.signature_id, m.test_id) for m in matches] == [("sched", RESIZE)]
    assert matches[0].excerpt.startswith("BuildErrorException: 实例")
    # Both parts must match: the same test with another traceback is not this bug.
    assert not match_failures(sigs, [FailedTest(RESIZE, "Timeout")], None)


def test_log_rules_read_the_files_tail_plain_or_gzipped(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    (logs / "controller").mkdir(parents=True)
    (logs / "controller" / "n-cpu.log").write_text(
        "ok\nERROR nova.compute Timed out waiting for vm-ü to start\n", encoding="utf-8")
    with gzip.open(logs / "big.log.gz", "wt", encoding="utf-8") as handle:
        handle.write("needle at the start\n" + "filler line\n" * 200_000 + "last line\n")
    sigs = parse_signatures([
        {"id": "boot", "bug": BUG, "file": "controller/n-cpu.log", "pattern": "Timed out .* start"},
        {"id": "early", "bug": BUG, "file": "big.log", "pattern": "needle"},
        {"id": "late", "bug": BUG, "file": "big.log", "pattern": "^last line$"},
        {"id": "absent", "bug": BUG, "file": "missing.log", "pattern": "x"},
    ], "s")
    failed = [FailedTest(RESIZE, TRACE), FailedTest("x.test_list", "")]
    matches = match_failures(sigs, failed, logs, scan_bytes=64 * 1024)
    found = {(m.signature_id, m.test_id) for m in matches}
    # A log rule alone explains every failed test of the build.
    assert found == {("boot", RESIZE), ("boot", "x.test_list"), ("late", RESIZE),
                     ("late", "x.test_list")}
    boot = next(m for m in matches if m.signature_id == "boot")
    assert boot.file == "controller/n-cpu.log" and "vm-ü" in boot.excerpt
    # The line at the start of the 2 MB log lies outside the scanned tail.
    assert not any(m.signature_id == "early" for m in matches)
    assert any(m.signature_id == "early" for m in match_failures(sigs, failed, logs,
                                                                  scan_bytes=4 * 1024 * 1024))


def test_a_log_rule_never_follows_a_symlink_out_of_the_log_tree(tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("password=hunter2\n", encoding="utf-8")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "link.log").symlink_to(outside)
    sigs = parse_signatures([{"id": "leak", "bug": BUG, "file": "link.log",
                              "pattern": "password"}], "s")
    assert match_failures(sigs, [FailedTest(RESIZE)], logs) == []


def test_a_catastrophic_pattern_runs_in_linear_time(tmp_path: Path) -> None:
    # (a+)+$ takes Python's re exponential time on "aaaa...b"; RE2 does not backtrack.
    # No timing assertion (bench/ holds figures): with Python's re this call would not
    # return (pytest-timeout ends it).
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").write_text("a" * 3000 + "b\n", encoding="utf-8")
    sigs = parse_signatures([{"id": "evil", "bug": BUG, "file": "a.log", "pattern": "(a+)+$"},
                             {"id": "evil-tb", "bug": BUG, "traceback": "(x+x+)+y"}], "s")
    assert match_failures(sigs, [FailedTest(RESIZE, "x" * 5000)], logs) == []


def test_signature_files_load_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("- id: a\n  bug: https://bugs.example/1\n  test: x\n", encoding="utf-8")
    assert [s.id for s in load_signatures(path)] == ["a"]
    path.write_text("- id: a\n  bug: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_signatures(path)


def test_log_patterns_match_within_one_line(tmp_path: Path) -> None:
    # The whole-tail search is only a filter: a hit that spans lines is no match.
    (tmp_path / "a.log").write_text("alpha\nbeta x\ngamma\n", encoding="utf-8")
    sigs = parse_signatures([
        {"id": "later-line", "bug": BUG, "file": "a.log", "pattern": "a[^z]*x"},
        {"id": "only-across", "bug": BUG, "file": "a.log", "pattern": "alpha[^z]beta"},
        {"id": "anchored", "bug": BUG, "file": "a.log", "pattern": "^gamma$"},
    ], "s")
    found = {m.signature_id: m.excerpt for m in match_failures(sigs, [FailedTest(RESIZE)],
                                                               tmp_path)}
    assert found == {"later-line": "beta x", "anchored": "gamma"}
