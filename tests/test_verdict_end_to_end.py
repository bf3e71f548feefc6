"""The baseline-aware verdict in the demo-like lab: simulated Gerrit and lab, real CI.

`test_resize` fails on the branch tip (a baseline build with faults/tempest-fail
holding it) and then on a change: no -1, and the comment names the baseline
build. A new failure beside it still gets -1; a flaky test gets no -1 and is
named; a failure a known-failure signature matches gets no -1, and the comment
and the build page name the signature and its bug.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from ci.app.demo import Demo
from ci.db import make_engine, make_sessionmaker
from ci.models import BaselineRun, Build, BuildState
from tests.test_end_to_end import (
    BRANCH,
    change_number,
    cli,
    demo_state,
    reviews,
    sim,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
# Two builds run in the module fixture: on a loaded 2-core machine that outlasts the
# default 120 s of pytest-timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
BUG = "https://bugs.launchpad.net/nova/+bug/2034567"
SIGNATURES = [{"id": "snapshot-scheduling", "bug": BUG, "test": "test_snapshot_pattern",
               "traceback": "实例 .* could not be scheduled"}]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    state = tmp_path_factory.mktemp("verdict-demo")
    raw = yaml.safe_load((ROOT / "etc" / "demo.yaml").read_text(encoding="utf-8"))
    signatures = state / "signatures.yaml"
    signatures.write_text(yaml.safe_dump(SIGNATURES), encoding="utf-8")
    raw["verdict"] = {"signatures": str(signatures)}
    config_path = state / "demo.yaml"
    config_path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    # One lab set: the builds run one after the other, on the lab whose faults we set.
    running = Demo(config_path, state / "run", dashboard_port=0, lab_sets=1)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def faults(demo: Demo, *, fail: str = "", flaky: str = "") -> None:
    assert demo.lab is not None
    (demo.lab.faults_dir / "tempest-fail").write_text(fail, encoding="utf-8")
    (demo.lab.faults_dir / "tempest-flaky").write_text(flaky, encoding="utf-8")


def push(demo: Demo, subject: str) -> int:
    return change_number(sim(demo, "push", "--project", "openstack/nova", "--branch", BRANCH,
                             "--file", "nova/virt/hyperv/vmops.py", "--subject", subject,
                             "--owner", "Zoë Ångström"))


def vote_on(demo: Demo, change: int) -> dict[str, Any]:
    def posted() -> dict[str, Any] | None:
        return next((r for r in reviews(demo) if r["change"] == change), None)
    return wait_for(posted, timeout=300, what=f"the review of change {change}",
                    explain=lambda: demo_state(demo))


def build_of(demo: Demo, change: int) -> int:
    status = json.load(urllib.request.urlopen(demo.url + "api/status", timeout=10))  # noqa: S310
    return next(b["id"] for b in status["recent"] if b["change"] == change)


class Explained:
    """The tip's baseline and a change failing what it fails, a known bug, and a flaky test."""

    def __init__(self, demo: Demo) -> None:
        # The simulated Gerrit makes a project's repository on its first push (a real
        # one has it): a change outside the Hyper-V code, which builds nothing.
        sim(demo, "push", "--project", "openstack/nova", "--branch", BRANCH, "--file",
            "nova/compute/manager.py", "--subject", "Not a Hyper-V change")
        faults(demo, fail="test_resize\n")
        queued = cli(demo, "baseline", "run", "--project", "openstack/nova", "--branch", BRANCH)
        assert queued.exit_code == 0, queued.output
        self.baseline_id = int(queued.output.split("queued baseline build ")[1].split(":")[0])
        # The baseline runs first (the queue is in order); the change's faults are set
        # once its build starts: the tip fails only test_resize.
        state = wait_for(lambda: self._finished(demo), timeout=300, what="the baseline build",
                         explain=lambda: demo_state(demo))
        assert state[0] == BuildState.FAILED, state
        faults(demo, fail="test_resize\ntest_snapshot_pattern\n", flaky="test_shelve_unshelve\n")
        self.change = push(demo, "Fix résize — 修复")
        self.review = vote_on(demo, self.change)
        self.message: str = self.review["message"]
        self.build_id = build_of(demo, self.change)

    def _finished(self, demo: Demo) -> tuple[str, str] | None:
        """(state, summary) of the baseline's first attempt once it finished."""
        assert demo.config is not None
        engine = make_engine(demo.config.database.url)
        try:
            with make_sessionmaker(engine)() as session:
                build = session.get(Build, self.baseline_id)
                if build is None or not BuildState(build.state).finished:
                    return None
                return build.state, build.summary
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def explained(demo: Demo) -> Explained:
    return Explained(demo)


def test_a_failure_the_tip_has_too_gives_no_minus_one_and_names_the_baseline(
        demo: Demo, explained: Explained) -> None:
    assert explained.review["labels"] == {"Verified": 0}, explained.message
    message = explained.message
    assert message.startswith("Build failed, but every failure is explained")
    assert ": FAILURE in " in message  # the CIWatch line as always
    tip_line = next(line for line in message.splitlines()
                    if line.startswith("- ") and "test_resize_server_confirm" in line)
    assert re.search(r"\]: also fails on the branch tip at [0-9a-f]{12} "
                     rf"\(baseline build {explained.baseline_id}\) http://127\.0\.0\.1:\d+/logs/"
                     r"baseline/openstack_nova/unmaintained_2023\.1/hyperv-tempest-\d+/$",
                     tip_line), tip_line
    # The baseline ran the tip, recorded its commit, and was never reported to Gerrit.
    assert demo.config is not None
    engine = make_engine(demo.config.database.url)
    try:
        with make_sessionmaker(engine)() as session:
            build = session.get(Build, explained.baseline_id)
            assert build is not None and build.state == BuildState.FAILED
            assert build.patchset_id is None and len(build.tested_commit or "") == 40
            run = session.scalar(select(BaselineRun).where(BaselineRun.id == build.baseline_id))
            assert run is not None and run.branch == BRANCH
    finally:
        engine.dispose()
    assert not [r for r in reviews(demo) if r["change"] == 0]
    listed = cli(demo, "baseline", "list")
    assert f"{explained.baseline_id}" in listed.output and "failed" in listed.output
    # Its build page shows it, with the tip's failures (it has no change to link).
    page = urllib.request.urlopen(f"{demo.url}builds/{explained.baseline_id}",  # noqa: S310
                                  timeout=10).read().decode("utf-8")
    assert "test_resize_server_confirm" in page and BRANCH in page


def test_a_flaky_test_gets_no_minus_one_and_is_named(explained: Explained) -> None:
    assert explained.review["labels"] == {"Verified": 0}
    flaky = explained.message.split("Flaky tests (1): failed, then passed when re-run")[1]
    assert ".test_shelve_unshelve_server" in flaky.split("\n\n")[0]
    # Not among the failures: it did not fail the build.
    explained_failures = explained.message.split("Explained failures")[1].split("Flaky tests")[0]
    assert "test_shelve" not in explained_failures


def test_a_signature_match_gives_no_minus_one_and_is_named(demo: Demo,
                                                           explained: Explained) -> None:
    message = explained.message
    known = next(line for line in message.splitlines()
                 if line.startswith("- ") and "test_snapshot_pattern" in line)
    assert known.endswith(f"]: known failure snapshot-scheduling {BUG}"), known
    assert f"- snapshot-scheduling: {BUG}" in message
    page = urllib.request.urlopen(f"{demo.url}builds/{explained.build_id}",  # noqa: S310
                                  timeout=10).read().decode("utf-8")
    assert 'id="verdict"' in page and "snapshot-scheduling" in page and BUG in page
    assert f"baseline build {explained.baseline_id}" in page
    # `signatures test` tries a file against this past build.
    tried = cli(demo, "signatures", "test", str(demo.state_dir.parent / "signatures.yaml"),
                str(explained.build_id))
    assert tried.exit_code == 0, tried.output
    assert f"snapshot-scheduling {BUG}: " in tried.output
    assert "test_snapshot_pattern" in tried.output


def test_a_new_failure_still_gets_minus_one(demo: Demo, explained: Explained) -> None:
    faults(demo, fail="test_resize\ntest_list_servers\n")
    change = push(demo, "Break the listing")
    review = vote_on(demo, change)
    faults(demo)
    assert review["labels"] == {"Verified": -1}, review["message"]
    message = review["message"]
    assert message.startswith("Build failed.\n")
    new = message.split("New failures (1): these count against the change:\n")[1]
    assert ".test_list_servers[" in new.splitlines()[0]
    assert re.search(r"test_resize_server_confirm\[.*\]: also fails on the branch tip", message)
