"""Files from Gerrit in bulk: `--files` rows as Gerrit shapes them, and one
`change:A OR change:B ...` query for many patch sets (ci.gerrit against SimGerrit)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from ci.config import Config
from ci.gerrit import GerritClient
from ci.gerrit_errors import GerritRejected
from sim.gerrit import SimGerrit
from sim.gerrit_query import MAX_TERMS, QueryError, parse_query


class CountingClient(GerritClient):
    """The real client, counting the commands it sends."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.commands: list[list[str]] = []

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None) -> str:
        self.commands.append(list(argv))
        return super().run(argv, stdin=stdin)


def test_files_of_many_patch_sets_is_one_query(stream_config: Config,
                                               sim_gerrit: SimGerrit) -> None:
    state = sim_gerrit.state
    a = state.push("openstack/nova", files={"nova/virt/hyperv/vmops.py": "v\n"},
                   subject="Hyper-V: café")
    state.push("openstack/nova", files={"nova/virt/hyperv/vmops.py": "v2\n",
                                        "nova/virt/hyperv/ünïcode.py": "u\n"}, change=a["change"])
    b = state.push("openstack/compute-hyperv", files={"README.rst": "x\n"})
    client = CountingClient(stream_config.gerrit)
    try:
        found = client.files_of([(a["change"], 1), (a["change"], 2), (b["change"], 1),
                                 (b["change"], 7)])
        assert len(client.commands) == 1
        assert found == {
            (a["change"], 1): ["nova/virt/hyperv/vmops.py"],
            (a["change"], 2): ["nova/virt/hyperv/vmops.py", "nova/virt/hyperv/ünïcode.py"],
            (b["change"], 1): ["README.rst"],
        }  # 7 does not exist: left out, for the caller's own lookup to refuse
        for (change, ps), files in found.items():
            assert sorted(client.changed_files(change, ps)) == sorted(files)
        with pytest.raises(GerritRejected):
            client.changed_files(b["change"], 7)
    finally:
        client.close()


def test_files_rows_have_gerrits_shape(stream_config: Config, sim_gerrit: SimGerrit) -> None:
    pushed = sim_gerrit.state.push("openstack/nova", files={"nova/virt/hyperv/a.py": "1\n2\n"})
    client = GerritClient(stream_config.gerrit)
    try:
        (row,) = client.query(f"change:{pushed['change']}", current_patch_set=True, files=True)
        files = row["currentPatchSet"]["files"]
        assert files[0]["file"] == "/COMMIT_MSG"
        assert {f["type"] for f in files} <= {"ADDED", "MODIFIED", "DELETED", "RENAMED",
                                               "COPIED", "REWRITE"}
        assert all(f["deletions"] <= 0 and f["insertions"] >= 0 for f in files)
        assert files[1] == {"file": "nova/virt/hyperv/a.py", "type": "ADDED", "insertions": 2,
                            "deletions": 0}
        # cmd-query.txt: --files gives nothing without --current-patch-set or --patch-sets.
        (bare,) = client.query(f"change:{pushed['change']}", files=True)
        assert "files" not in json.dumps(bare)
    finally:
        client.close()


def _change(number: int, status: str = "NEW") -> dict[str, object]:
    return {"number": number, "id": "I" + "a" * 40, "status": status, "project": "p",
            "branch": "master", "commitMessage": "Hyper-V", "lastUpdated": 0,
            "owner": {"username": "u", "name": "n", "email": "e"}, "patchSets": []}


def test_the_simulated_query_language_groups_like_gerrits() -> None:
    match, limit = parse_query("status:open (change:1 OR change:3) -change:3 limit:9 limit:5")
    assert [match(_change(n)) for n in (1, 2, 3)] == [True, False, False] and limit == 5
    match, _ = parse_query("change:1 OR change:2 status:merged")  # AND binds tighter
    assert [match(_change(n, "MERGED")) for n in (1, 2)] == [True, True]
    assert [match(_change(n)) for n in (1, 2)] == [True, False]
    match, _ = parse_query("NOT change:1")
    assert not match(_change(1)) and match(_change(2))


@pytest.mark.parametrize(("query", "message"), [
    ("change:1 OR", "no viable alternative"),
    ("(change:1", "missing ')'"),
    ("change:1)", "extraneous input"),
    (" OR ".join(f"change:{n}" for n in range(MAX_TERMS + 1)),
     f"too many terms in query: {MAX_TERMS + 1} terms (max = {MAX_TERMS})"),
])
def test_the_simulated_query_refuses_what_gerrit_refuses(query: str, message: str) -> None:
    with pytest.raises(QueryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_query(query)


def test_a_refused_batch_is_a_gerrit_error_row(stream_config: Config,
                                               sim_gerrit: SimGerrit) -> None:
    client = GerritClient(stream_config.gerrit)
    try:
        with pytest.raises(GerritRejected, match="too many terms"):
            client.query(" OR ".join(f"change:{n}" for n in range(MAX_TERMS + 1)))
        assert client.query(" OR ".join(f"change:{n}" for n in range(MAX_TERMS))) == []
    finally:
        client.close()
