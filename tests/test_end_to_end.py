"""The whole loop, as `make demo` runs it: simulated Gerrit and lab, real everything else.

A push touching the Hyper-V code gets a Verified vote; one that does not gets
nothing; `recheck` runs it again; Chinese names and non-ASCII paths survive.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ci.app.cli import main as ci_cli
from ci.app.demo import Demo
from sim.cli import sim as sim_cli

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def wait_for(predicate: Callable[[], Any], timeout: float = 90, what: str = "",
             explain: Callable[[], str] | None = None) -> Any:
    """The predicate's first true value; on timeout, an AssertionError carrying
    `explain()` (what the demo holds: a stuck build and a lost event differ)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}"
                         + (f"\n{explain()}" if explain is not None else ""))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    state = tmp_path_factory.mktemp("demo")
    running = Demo(ROOT / "etc" / "demo.yaml", state, dashboard_port=0)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def sim(demo: Demo, *args: str) -> str:
    result = CliRunner().invoke(sim_cli, list(args), env={"HYPERV_CI_STATE_DIR":
                                                          str(demo.state_dir)})
    assert result.exit_code == 0, result.output
    return result.output


def cli(demo: Demo, *args: str) -> Any:
    """`hyperv-ci -c <the demo's config> ARGS`, in this process."""
    return CliRunner().invoke(ci_cli, ["-c", str(demo.state_dir / "demo-config.yaml"), *args])


def demo_state(demo: Demo) -> str:
    """The builds, events and reports of the running demo, as the operator's commands list
    them, and the reviews Gerrit holds: what a timed-out wait prints."""
    parts = []
    for args in (["builds"], ["events", "list"], ["reports", "list"]):
        result = cli(demo, *args)
        parts.append(f"$ hyperv-ci {' '.join(args)} (exit {result.exit_code})\n{result.output}")
    parts.append("reviews in the simulated Gerrit: " + sim(demo, "reviews", "--json"))
    return "\n".join(parts)


def reviews(demo: Demo) -> list[dict[str, Any]]:
    return json.loads(sim(demo, "reviews", "--json"))


def api_status(demo: Demo) -> dict[str, Any]:
    with urllib.request.urlopen(demo.url + "api/status", timeout=10) as response:  # noqa: S310
        return json.load(response)


# Where the Hyper-V code lives (etc/demo.yaml watches only such branches).
BRANCH = "unmaintained/2023.1"


def change_number(output: str) -> int:
    digits = [int(tok.strip(",:")) for tok in output.replace(",", " ").split()
              if tok.strip(",:").isdigit() and int(tok.strip(",:")) > 1000]
    assert digits, output
    return digits[0]


def test_hyperv_change_gets_a_vote_and_recheck_runs_again(demo: Demo) -> None:
    # Only a non-ASCII path: the build exists only if it survived the query and the filter.
    out = sim(demo, "push", "--project", "openstack/nova", "--branch", BRANCH,
              "--file", "nova/virt/hyperv/vhdutils_é中.py",
              "--subject", "修复 VHD 格式 — Fix VHD format", "--owner", "张伟")
    change = change_number(out)

    def voted(count: int) -> list[dict[str, Any]] | None:
        mine = [r for r in reviews(demo) if r["change"] == change and r["labels"]]
        return mine if len(mine) >= count else None

    first = wait_for(lambda: voted(1), what="the first vote",
                     explain=lambda: demo_state(demo))[0]
    assert first["patchset"] == 1
    assert first["labels"] == {"Verified": 1}, first["message"]
    assert "* hyperv-tempest http://127.0.0.1:" in first["message"]
    assert ": SUCCESS in" in first["message"]

    status = api_status(demo)
    build = next(b for b in status["recent"] if b["change"] == change)
    assert build["state"] == "succeeded"
    assert build["subject"] == "修复 VHD 格式 — Fix VHD format"
    assert build["owner"] == "张伟"
    page = urllib.request.urlopen(demo.url, timeout=10).read().decode("utf-8")  # noqa: S310
    assert "修复 VHD 格式" in page
    # The log link in the vote is browsable.
    log_url = first["message"].split("* hyperv-tempest ", 1)[1].split(" ", 1)[0]
    with urllib.request.urlopen(log_url, timeout=10) as response:  # noqa: S310
        assert response.status == 200

    sim(demo, "comment", f"{change},1", "recheck")
    second = wait_for(lambda: voted(2), what="the vote after recheck",
                      explain=lambda: demo_state(demo))
    assert len(second) == 2


def test_change_outside_the_hyperv_code_gets_nothing(demo: Demo) -> None:
    out = sim(demo, "push", "--project", "openstack/nova", "--branch", BRANCH, "--file",
              "nova/compute/manager.py", "--subject", "Not a Hyper-V change")
    change = change_number(out)
    # A Hyper-V change pushed after it is voted on: the listener has seen both.
    later = change_number(sim(demo, "push", "--project", "openstack/os-win", "--branch", BRANCH,
                              "--file",
                              "os_win/utils/vmutils.py", "--subject", "os-win: whole repo"))
    wait_for(lambda: any(r["change"] == later and r["labels"] for r in reviews(demo)),
             what="the later change's vote", explain=lambda: demo_state(demo))
    assert not [r for r in reviews(demo) if r["change"] == change]
    assert not [b for b in api_status(demo)["recent"] if b["change"] == change]
