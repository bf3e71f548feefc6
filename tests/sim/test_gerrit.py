"""The simulated Gerrit: its model (real git, real event shapes) and its SSH commands."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from ci.gerrit import GerritClient
from ci.gerrit_errors import GerritError
from sim.gerrit import SimGerrit, make_client_identity
from sim.gerrit_state import GerritState, QueryError, SimGerritError

CHANGE_KEYS = {"project", "branch", "id", "number", "subject", "owner", "url", "commitMessage",
               "createdOn", "status"}
PATCHSET_KEYS = {"number", "revision", "parents", "ref", "uploader", "createdOn", "author",
                 "kind", "sizeInsertions", "sizeDeletions"}


class Recorder:
    def __init__(self, state: GerritState) -> None:
        self.lines: list[str] = []
        state.subscribe(self.lines.append)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        parsed = [json.loads(line) for line in self.lines]
        return [e for e in parsed if kind is None or e["type"] == kind]


def git(*args: str) -> str:
    return subprocess.run(["git", "-c", "core.quotepath=false", *args], capture_output=True,
                          check=True, text=True, encoding="utf-8").stdout


def assert_change_event(event: dict[str, Any]) -> None:
    assert set(event["change"]) >= CHANGE_KEYS
    assert set(event["patchSet"]) >= PATCHSET_KEYS
    assert isinstance(event["change"]["number"], int)
    assert event["change"]["id"].startswith("I") and len(event["change"]["id"]) == 41
    assert event["project"] == event["change"]["project"]
    assert event["refName"] == f"refs/heads/{event['change']['branch']}"
    assert event["changeKey"] == {"id": event["change"]["id"]}
    assert isinstance(event["eventCreatedOn"], int)
    assert event["patchSet"]["sizeDeletions"] <= 0


@pytest.fixture
def state(tmp_path: Path) -> GerritState:
    return GerritState(tmp_path / "gerrit")


def test_push_creates_real_change_refs_and_patchset_created(state: GerritState,
                                                            tmp_path: Path) -> None:
    rec = Recorder(state)
    pushed = state.push("openstack/nova", files=["nova/virt/hyperv/vmops.py", "文档/说明 1.txt"],
                        subject="Fix “Zoë” in 中文", owner="张伟")
    assert pushed["change"] == 10001 and pushed["ref"] == "refs/changes/01/10001/1"
    [created] = rec.events("patchset-created")
    assert_change_event(created)
    assert created["change"]["subject"] == "Fix “Zoë” in 中文"
    assert created["uploader"]["name"] == "张伟"
    assert created["patchSet"]["ref"] == pushed["ref"]
    assert created["patchSet"]["revision"] == pushed["revision"]
    # The ref is fetchable like a job fetches it, and holds the files.
    work = tmp_path / "work"
    git("init", "-q", str(work))
    git("-C", str(work), "fetch", "-q", state.git_url("openstack/nova"), pushed["ref"])
    files = git("-C", str(work), "show", "--name-only", "--format=", "FETCH_HEAD").split("\n")
    assert "文档/说明 1.txt" in files and "nova/virt/hyperv/vmops.py" in files
    assert rec.events("ref-updated")[0]["refUpdate"]["refName"] == pushed["ref"]


def test_new_patchset_sits_on_the_branch_tip(state: GerritState) -> None:
    first = state.push("openstack/nova", files=["a.py"], subject="one")
    other = state.push("openstack/nova", files=["b.py"], subject="other")
    state.merge(other["change"])
    second = state.push("openstack/nova", files={"a.py": "v2\n"}, subject="one v2",
                        change=first["change"])
    assert second == {**second, "change": first["change"], "patchset": 2,
                      "ref": "refs/changes/01/10001/2"}
    repo = state.repo_path("openstack/nova")
    tip = git("-C", str(repo), "rev-parse", "refs/heads/master").strip()
    parent = git("-C", str(repo), "rev-parse", f"{second['revision']}^").strip()
    assert parent == tip


def test_comment_added_has_real_shape(state: GerritState) -> None:
    pushed = state.push("openstack/nova", files=["a.py"], subject="s")
    rec = Recorder(state)
    state.comment(pushed["change"], 1, "recheck hyper-v", author="Zoë")
    [added] = rec.events("comment-added")
    assert_change_event(added)
    assert added["comment"] == "Patch Set 1:\n\nrecheck hyper-v"
    assert added["author"]["name"] == "Zoë"
    assert all(isinstance(a["value"], str) and "oldValue" not in a for a in added["approvals"])
    assert state.reviews() == []  # a person's comment is not a `gerrit review`


def test_votes_report_old_values(state: GerritState) -> None:
    pushed = state.push("openstack/nova", files=["a.py"], subject="s")
    rec = Recorder(state)
    state.review(pushed["change"], 1, author="hyperv-ci", labels={"Verified": 1}, message="ok")
    state.review(pushed["change"], 1, author="hyperv-ci", labels={"Verified": -1}, message="")
    first, second = rec.events("comment-added")
    verified = {a["type"]: a for a in second["approvals"]}["Verified"]
    assert verified == {"type": "Verified", "description": "Verified", "value": "-1",
                        "oldValue": "1"}
    assert first["comment"] == "Patch Set 1: Verified+1\n\nok"
    assert second["comment"] == "Patch Set 1: Verified-1"


def test_abandon_and_merge(state: GerritState) -> None:
    a = state.push("openstack/nova", files=["a.py"], subject="a")
    b = state.push("openstack/nova", files=["b.py"], subject="b")
    c = state.push("openstack/nova", files=["c.py"], subject="c")
    rec = Recorder(state)
    state.abandon(a["change"], by="Zoë", reason="obsolete")
    [abandoned] = rec.events("change-abandoned")
    assert_change_event(abandoned)
    assert abandoned["abandoner"]["name"] == "Zoë"
    assert abandoned["change"]["status"] == "ABANDONED"
    state.merge(b["change"])  # fast-forward
    new_rev = state.merge(c["change"])  # the branch moved: a real merge commit
    repo = state.repo_path("openstack/nova")
    parents = git("-C", str(repo), "rev-list", "--parents", "-n1", new_rev).split()
    assert parents[1:] == [b["revision"], c["revision"]]
    merged = rec.events("change-merged")
    assert [m["newRev"] for m in merged] == [b["revision"], new_rev]
    assert merged[1]["change"]["status"] == "MERGED"
    updated = [e["refUpdate"] for e in rec.events("ref-updated")]
    assert updated[-1] == {"oldRev": b["revision"], "newRev": new_rev,
                           "refName": "refs/heads/master", "project": "openstack/nova"}
    with pytest.raises(SimGerritError, match="merged"):
        state.merge(c["change"])


def test_query_operators(state: GerritState) -> None:
    a = state.push("openstack/nova", files=["a.py"], subject="a")
    b = state.push("openstack/os-win", files=["b.py"], subject="b", branch="stable/2023.2")
    state.abandon(a["change"])
    rows, more = state.query("status:open")
    assert [r["number"] for r in rows] == [b["change"]] and not more
    rows, _ = state.query(f"{a['change']}")
    assert rows[0]["status"] == "ABANDONED" and rows[0]["open"] is False
    rows, _ = state.query("project:openstack/os-win branch:stable/2023.2 -age:1h")
    assert [r["number"] for r in rows] == [b["change"]]
    rows, more = state.query("-status:merged", limit=1)
    assert len(rows) == 1 and more
    with pytest.raises(QueryError, match="Unsupported operator"):
        state.query("label:Verified+1")


@pytest.fixture
def identity(tmp_path: Path) -> tuple[Path, str]:
    return make_client_identity(tmp_path / "client", "hyperv-ci")


@pytest.fixture
def sim(tmp_path: Path, identity: tuple[Path, str]) -> Iterator[SimGerrit]:
    server = SimGerrit(tmp_path / "state", users={"hyperv-ci": identity[1]})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(sim: SimGerrit, identity: tuple[Path, str]) -> Iterator[GerritClient]:
    gerrit = GerritClient(sim.client_config("hyperv-ci", identity[0]), timeout=10)
    yield gerrit
    gerrit.close()


def test_state_survives_a_restart(tmp_path: Path, identity: tuple[Path, str]) -> None:
    with SimGerrit(tmp_path / "state", users={"hyperv-ci": identity[1]}) as first:
        key = first.host_key_line().split(" ", 1)[1]
        pushed = first.state.push("openstack/nova", files=["a.py"], subject="s")
        first.state.review(pushed["change"], 1, author="hyperv-ci", labels={"Verified": 1})
    with SimGerrit(tmp_path / "state", users={"hyperv-ci": identity[1]}) as second:
        assert second.host_key_line().split(" ", 1)[1] == key
        assert second.state.reviews()[0]["labels"] == {"Verified": 1}
        assert second.state.push("openstack/nova", files=["b.py"], subject="t")["change"] == 10002
        gerrit = GerritClient(second.client_config("hyperv-ci", identity[0]))
        assert gerrit.changed_files(pushed["change"], 1) == ["a.py"]
        gerrit.close()


def test_review_over_ssh_emits_comment_added(sim: SimGerrit, client: GerritClient) -> None:
    pushed = sim.state.push("openstack/nova", files=["a.py"], subject="s")
    sim.state.grant("hyperv-ci", {"Verified": (-1, 1), "Code-Review": (-1, 1)})
    rec = Recorder(sim.state)
    client.run(["gerrit", "review", "--project", "openstack/nova", "--code-review", "-1",
                "--label", "Verified=+1", "--message", "Build succeeded.", "--tag",
                "autogenerated:hyperv-ci", f"{pushed['change']},1"])
    [added] = rec.events("comment-added")
    assert added["author"]["username"] == "hyperv-ci"
    assert added["comment"] == "Patch Set 1: Code-Review-1 Verified+1\n\nBuild succeeded."
    assert sim.state.reviews()[0]["labels"] == {"Code-Review": -1, "Verified": 1}


@pytest.mark.parametrize(("target", "error"), [
    ("10001,9", 'fatal: "10001,9" no such patch set'),
    ("99999,1", 'fatal: "99999,1" no such patch set'),
    ("10001,x", 'fatal: "10001,x" is not a valid patch set'),
])
def test_bad_review_target_is_fatal(sim: SimGerrit, client: GerritClient, target: str,
                                    error: str) -> None:
    sim.state.push("openstack/nova", files=["a.py"], subject="s")
    with pytest.raises(GerritError) as info:
        client.run(["gerrit", "review", "--message", "m", target])
    assert info.value.exit_status == 1 and info.value.stderr.strip() == error


def test_commands_answer_like_gerrit(sim: SimGerrit, client: GerritClient) -> None:
    assert client.run(["gerrit", "version"]) == "gerrit version 3.9.1-sim\n"
    bad = client.run(["gerrit", "query", "--format=JSON", "foo:bar"])
    assert json.loads(bad) == {"type": "error", "message": "Unsupported operator foo:bar"}
    with pytest.raises(GerritError) as info:
        client.run(["gerrit", "ls-frobs"])
    assert info.value.exit_status == 1 and "fatal: gerrit: ls-frobs: not found" in info.value.stderr
    with pytest.raises(GerritError, match="Administrate Server"):
        client.run(["sim-reviews", "{}"])


def test_gerritlib_stray_quote_is_tolerated(sim: SimGerrit, identity: tuple[Path, str]) -> None:
    number = sim.state.push("openstack/nova", files=["a.py"], subject="s")["change"]
    ssh = paramiko.SSHClient()
    ssh.load_host_keys(str(sim.known_hosts_file))
    ssh.connect("127.0.0.1", port=sim.port, username="hyperv-ci", key_filename=str(identity[0]),
                allow_agent=False, look_for_keys=False, timeout=10)
    _, stdout, _ = ssh.exec_command(f'gerrit query --format json {number}"')
    rows = [json.loads(line) for line in stdout.read().decode().splitlines()]
    ssh.close()
    assert rows[0]["number"] == number and rows[-1]["type"] == "stats"


def test_stream_subscription_filter_and_interrupt(sim: SimGerrit,
                                                  identity: tuple[Path, str]) -> None:
    ssh = paramiko.SSHClient()
    ssh.load_host_keys(str(sim.known_hosts_file))
    ssh.connect("127.0.0.1", port=sim.port, username="hyperv-ci", key_filename=str(identity[0]),
                allow_agent=False, look_for_keys=False, timeout=10)
    stdin, stdout, _ = ssh.exec_command("gerrit stream-events -s comment-added")
    assert sim.wait_for_streams(1)
    pushed = sim.state.push("openstack/nova", files=["a.py"], subject="s")
    sim.state.comment(pushed["change"], 1, "recheck")
    assert json.loads(stdout.readline())["type"] == "comment-added"
    stdin.write(b"\x03")
    assert stdout.channel.recv_exit_status() == 130
    ssh.close()


def test_overflowing_stream_gets_dropped_output(tmp_path: Path,
                                                identity: tuple[Path, str]) -> None:
    with SimGerrit(tmp_path / "s", users={"hyperv-ci": identity[1]},
                   stream_queue_size=4) as server:
        gerrit = GerritClient(server.client_config("hyperv-ci", identity[0]))
        stop = threading.Event()
        stream = gerrit.stream_events(stop, poll_timeout=0.05, tick=0.05)
        assert next(stream) is None and server.wait_for_streams(1)
        for i in range(5000):
            server.emit_raw(json.dumps({"type": "ref-replicated", "n": i}))
        seen = []
        for line in stream:
            if line is None:
                break
            seen.append(json.loads(line)["type"])
        stop.set()
        stream.close()
        gerrit.close()
    assert "dropped-output" in seen and len(seen) < 5000


def test_stop_releases_port_and_threads(tmp_path: Path, identity: tuple[Path, str]) -> None:
    before = set(threading.enumerate())
    server = SimGerrit(tmp_path / "s", users={"hyperv-ci": identity[1]}).start()
    port = server.port
    gerrit = GerritClient(server.client_config("hyperv-ci", identity[0]))
    stream = gerrit.stream_events(threading.Event(), poll_timeout=0.05, tick=0.05)
    assert next(stream) is None and server.wait_for_streams(1)
    assert (tmp_path / "s" / "sim-gerrit.json").exists()
    server.stop()
    with pytest.raises(GerritError):
        next(stream)
    gerrit.close()
    assert not (tmp_path / "s" / "sim-gerrit.json").exists()
    assert {t for t in threading.enumerate() if t.name == "sim-gerrit"} - before == set()
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))
    with socket.socket() as sock:  # a restarted sim can listen on the same port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def _review(client: GerritClient, change: int, *args: str) -> None:
    client.run(["gerrit", "review", "--project", "openstack/nova", "--message",
                "Build succeeded. ✓ 中文", *args, f"{change},1"])


def test_a_vote_beyond_the_grant_fails_the_whole_review(sim: SimGerrit,
                                                         client: GerritClient) -> None:
    # PostReview.checkLabels: a restricted value is an AuthException, whatever
    # change.strictLabels says; ReviewCommand prints it per patch set, then fails.
    change = sim.state.push("openstack/nova", files=["a.py"], subject="s")["change"]
    rec = Recorder(sim.state)
    with pytest.raises(GerritError) as info:
        _review(client, change, "--label", "Verified=+1", "--label", "Code-Review=2")
    assert info.value.exit_status == 1
    assert info.value.stderr == ('error: fatal: Applying label "Code-Review": 2 is restricted\n'
                                 "\nfatal: one or more reviews failed; review output above\n")
    # Nothing recorded: no vote (not even the permitted Verified), no message, no event.
    assert sim.state.reviews() == [] and rec.lines == []
    rows, _ = sim.state.query(str(change), comments=True, all_approvals=True)
    assert rows[0]["comments"] == [] and rows[0]["patchSets"][0]["approvals"] == []
    _review(client, change, "--label", "Verified=-1")  # the granted label still works
    assert [r["labels"] for r in sim.state.reviews()] == [{"Verified": -1}]


def test_an_account_granted_part_of_a_label_is_restricted_past_it(sim: SimGerrit,
                                                                   client: GerritClient) -> None:
    change = sim.state.push("openstack/nova", files=["a.py"], subject="s")["change"]
    sim.state.grant("hyperv-ci", {"Verified": (0, 1)})
    with pytest.raises(GerritError, match='Applying label "Verified": -1 is restricted'):
        _review(client, change, "--label", "verified=-1")  # names match case-insensitively
    _review(client, change, "--label", "verified=1")
    assert sim.state.reviews()[0]["labels"] == {"Verified": 1}


def test_unknown_labels_and_values_follow_strict_labels(sim: SimGerrit,
                                                        client: GerritClient) -> None:
    change = sim.state.push("openstack/nova", files=["a.py"], subject="s")["change"]
    # change.strictLabels is false by default: dropped silently, the comment lands.
    _review(client, change, "--label", "Foo=1", "--label", "Verified=2")
    [review] = sim.state.reviews()
    assert review["labels"] == {} and review["message"].startswith("Build succeeded.")
    sim.state.set_strict_labels(True)
    with pytest.raises(GerritError) as info:
        _review(client, change, "--label", "Foo=1")
    assert info.value.stderr.startswith('error: fatal: label "Foo" is not a configured label\n')
    with pytest.raises(GerritError) as info:
        _review(client, change, "--label", "Verified=2")
    assert info.value.stderr.startswith('error: fatal: label "Verified": 2 is not a valid value')
    assert len(sim.state.reviews()) == 1


def test_label_options_are_range_checked_while_parsing(sim: SimGerrit,
                                                       client: GerritClient) -> None:
    change = sim.state.push("openstack/nova", files=["a.py"], subject="s")["change"]
    with pytest.raises(GerritError) as info:
        _review(client, change, "--verified", "+2")
    assert info.value.stderr == 'fatal: "+2" must be in range -1..+1 for "--verified"\n'
    with pytest.raises(GerritError) as info:
        _review(client, change, "--strict-labels")  # removed in Gerrit 2.15
    assert info.value.stderr == 'fatal: "--strict-labels" is not a valid option\n'
    assert sim.state.reviews() == []


def test_grants_survive_a_restart_and_are_set_over_ssh(tmp_path: Path,
                                                       identity: tuple[Path, str]) -> None:
    with SimGerrit(tmp_path / "s", users={"hyperv-ci": identity[1]},
                   grants={"hyperv-ci": {"Code-Review": (-2, 2)}}, strict_labels=True) as first:
        admin = GerritClient(first.client_config("admin", first.admin_key_file))
        out = admin.run(["sim-grant", json.dumps({"account": "zoë", "labels": {
            "Workflow": [0, 1]}})])
        admin.close()
        assert json.loads(out) == {"account": "zoë", "labels": {"Workflow": [0, 1]}}
    second = GerritState(tmp_path / "s" / "gerrit")
    assert second.labels.strict
    assert second.labels.granted("hyperv-ci", "Code-Review") == (-2, 2)
    assert second.labels.granted("hyperv-ci", "Verified") is None  # replaced the default
    assert second.labels.granted("zoë", "Workflow") == (0, 1)


def test_a_connection_that_races_stop_is_closed_not_left_without_a_banner(
        tmp_path: Path) -> None:
    # What the accept loop runs for a connection it accepted as stop() began: the
    # client must fail at once, not wait out its banner timeout (30 s for ours).
    sim = SimGerrit(tmp_path / "sim", users={}).start()
    sim.stop()
    ours, theirs = socket.socketpair()
    with ours:
        sim._serve(theirs)
        ours.settimeout(10)  # only a guard: an open socket would block here
        assert ours.recv(1) == b""


def test_stop_releases_the_port_before_it_waits_for_its_threads(tmp_path: Path) -> None:
    sim = SimGerrit(tmp_path / "sim", users={}).start()
    port = sim.port
    held = threading.Event()
    release = threading.Event()

    def busy() -> None:  # a session still winding down when stop() is called
        held.set()
        release.wait(10)

    sim.spawn(busy)
    held.wait(5)
    stopper = threading.Thread(target=sim.stop)
    stopper.start()
    try:
        # stop() is joining `busy`: a client connecting now is refused, not queued
        # (a connect that raced the close sits in the backlog and is reset instead).
        refused = False
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except (ConnectionRefusedError, ConnectionResetError):
                refused = True
                break
            threading.Event().wait(0.01)
        assert refused
    finally:
        release.set()
        stopper.join(15)
