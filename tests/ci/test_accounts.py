"""Dashboard accounts (ci/accounts.py), the audit log (ci/audit.py) and the
`hyperv-ci users` commands, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from argon2 import PasswordHasher
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci import accounts, audit
from ci.app.cli import main
from ci.models import User

NAME = "Zoë Ødegård 张伟"
PASSWORD = "correct horse battery 电池"
# Argon2 at its real cost is ~0.1 s a hash on this machine: cheaper parameters keep
# these tests fast (the upgrade test puts the real ones back).
FAST = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
FAST_DUMMY = FAST.hash("the unknown names' dummy, at the test cost")


@pytest.fixture(autouse=True)
def fast_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounts, "_HASHER", FAST)
    monkeypatch.setattr(accounts, "dummy_hash", lambda: FAST_DUMMY)


def test_create_verify_list_remove(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        made = accounts.create(s, NAME, PASSWORD)
    assert (made.name, made.role, made.disabled, made.may_act) == (NAME, "operator", False, True)
    with sessions() as s, s.begin():
        stored = s.scalar(select(User.password_hash).where(User.name == NAME))
        assert stored is not None and stored.startswith("$argon2id$") and PASSWORD not in stored
        assert accounts.verify(s, NAME, PASSWORD) == made
        assert accounts.verify(s, NAME, PASSWORD + " ") is None
        assert accounts.verify(s, NAME, PASSWORD.upper()) is None
        assert accounts.verify(s, "nobody", PASSWORD) is None
        assert [a.name for a in accounts.list_accounts(s)] == [NAME]
    with sessions() as s, s.begin():
        assert accounts.remove(s, NAME)
        assert not accounts.remove(s, NAME)
        assert accounts.verify(s, NAME, PASSWORD) is None


def test_a_name_is_taken_once_and_checked(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        accounts.create(s, NAME, PASSWORD)
    with sessions() as s, s.begin(), pytest.raises(accounts.AccountError, match="exists"):
        accounts.create(s, NAME, "another long password")
    for bad in ("", "   ", "a\nb", "tab\there", "x" * 65, "zero\u200bwidth"):
        with sessions() as s, s.begin(), pytest.raises(accounts.AccountError):
            accounts.create(s, bad, PASSWORD)
    with sessions() as s, s.begin(), pytest.raises(accounts.AccountError, match="at least"):
        accounts.create(s, "short", "eleven char")
    with sessions() as s, s.begin(), pytest.raises(accounts.AccountError, match="role"):
        accounts.create(s, "viewer", PASSWORD, role="admin")


def test_a_disabled_account_neither_logs_in_nor_acts(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        accounts.create(s, NAME, PASSWORD)
        assert accounts.set_disabled(s, NAME, True)
        assert not accounts.set_disabled(s, "nobody", True)
    with sessions() as s, s.begin():
        assert accounts.verify(s, NAME, PASSWORD) is None
        found = accounts.find(s, NAME)
        assert found is not None and found.disabled and not found.may_act
        accounts.set_disabled(s, NAME, False)
    with sessions() as s, s.begin():
        assert accounts.verify(s, NAME, PASSWORD) is not None


def test_every_failure_costs_one_hash_check(sqlite_sessions: sessionmaker[Session],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Timing is not asserted (no timed tests): the work is. An unknown name, a wrong
    # password, a disabled account and an over-long password each run Argon2 once,
    # so none of them answers faster than the others.
    with sqlite_sessions() as s, s.begin():
        accounts.create(s, NAME, PASSWORD)
        accounts.create(s, "disabled one", PASSWORD)
        accounts.set_disabled(s, "disabled one", True)
    checked: list[str] = []
    real = accounts._HASHER

    class Counting:
        def verify(self, hash_: str, password: str) -> bool:
            checked.append(hash_)
            return real.verify(hash_, password)

        def check_needs_rehash(self, hash_: str) -> bool:
            return real.check_needs_rehash(hash_)

    monkeypatch.setattr(accounts, "_HASHER", Counting())
    with sqlite_sessions() as s:
        for name, password in [("nobody", PASSWORD), (NAME, "wrong password here"),
                               ("disabled one", PASSWORD), (NAME, PASSWORD * 200),
                               ("bad\nname", PASSWORD)]:
            assert accounts.verify(s, name, password) is None
    assert len(checked) == 5
    assert checked.count(accounts.dummy_hash()) == 3  # nobody, too long, invalid name


def test_an_old_hash_is_upgraded_at_login(sqlite_sessions: sessionmaker[Session],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounts, "_HASHER", PasswordHasher())  # the product's parameters
    weak = FAST.hash(PASSWORD)
    with sqlite_sessions() as s, s.begin():
        s.add(User(name=NAME, password_hash=weak, role="operator", disabled=False))
    with sqlite_sessions() as s, s.begin():
        assert accounts.verify(s, NAME, PASSWORD) is not None
    with sqlite_sessions() as s:
        upgraded = s.scalar(select(User.password_hash).where(User.name == NAME))
    assert upgraded != weak and not accounts._HASHER.check_needs_rehash(upgraded)


def test_audit_records_and_lists_newest_first(sessions: sessionmaker[Session]) -> None:
    who = audit.Actor(NAME, "local", "127.0.0.1")
    with sessions() as s, s.begin():
        audit.record(s, who, "abort", audit.Target(audit.BUILD, "7"), "aborted «x»")
        audit.record(s, who, "recheck", audit.Target(audit.PATCHSET, audit.patchset_id(1001, 2)))
        audit.record(s, audit.Actor("sso-user", "proxy", "10.0.0.2"), "drain",
                     audit.Target(audit.NODE, "hv-1"), "x" * 5000)
    with sessions() as s:
        every = audit.entries(s)
        assert [e.action for e in every] == ["drain", "recheck", "abort"]
        assert len(every[0].detail) == audit.DETAIL_MAX and every[0].auth == "proxy"
        build = audit.entries(s, targets=[audit.Target("build", "7"),
                                          audit.Target("patchset", "1001,2")])
        assert [(e.actor, e.action, e.target_id) for e in build] == [
            (NAME, "recheck", "1001,2"), (NAME, "abort", "7")]
        assert [e.action for e in audit.entries(s, kind="node")] == ["drain"]
        assert [e.action for e in audit.entries(s, before=every[0].id, limit=1)] == ["recheck"]
    with sessions() as s, s.begin(), pytest.raises(ValueError):
        audit.record(s, who, "x", audit.Target("change", "1"))


# -- hyperv-ci users ----------------------------------------------------------------------------

@pytest.fixture
def config_file(tmp_path: Path, sqlite_url: str) -> Path:
    path = tmp_path / "hyperv-ci.yaml"
    path.write_text(yaml.safe_dump({
        "database": {"url": sqlite_url},
        "gerrit": {"host": "127.0.0.1", "username": "ci", "key_file": "/nonexistent/key",
                   "known_hosts": "/nonexistent/known_hosts"},
        "projects": [{"name": "openstack/nova", "jobs": ["j"]}],
        "jobs": {"j": {"type": "local", "command": ["true"]}},
    }), encoding="utf-8")
    return path


def users(config: Path, *args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["-c", str(config), "users", *args], input=input)
    return result.exit_code, result.output


def _verify(sqlite_url: str, name: str, password: str) -> bool:
    from ci.db import make_engine, make_sessionmaker

    engine = make_engine(sqlite_url)
    try:
        with make_sessionmaker(engine)() as s:
            return accounts.verify(s, name, password) is not None
    finally:
        engine.dispose()


def test_users_add_from_a_password_file(config_file: Path, tmp_path: Path,
                                        sqlite_url: str) -> None:
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    code, out = users(config_file, "add", NAME, "--password-file", str(secret))
    assert code == 0, out
    assert f"{NAME} added (operator)" in out and PASSWORD not in out
    assert _verify(sqlite_url, NAME, PASSWORD)  # the file's newline is not part of it
    code, out = users(config_file, "add", NAME, "--password-file", str(secret))
    assert code == 2 and "exists" in out
    code, out = users(config_file, "list")
    assert code == 0 and NAME in out and "operator" in out and "active" in out


def test_users_add_from_the_prompt_asks_twice(config_file: Path, sqlite_url: str) -> None:
    code, out = users(config_file, "add", "alice", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert code == 0, out
    assert out.count("Password") == 1 and "Repeat for confirmation" in out
    assert PASSWORD not in out  # hidden input is not echoed
    assert _verify(sqlite_url, "alice", PASSWORD)
    # Two different entries: asked again; at the end of input nothing is made.
    code, out = users(config_file, "add", "bob", input=f"{PASSWORD}\nsomething else entirely\n")
    assert code != 0 and "do not match" in out
    assert not _verify(sqlite_url, "bob", PASSWORD)
    code, out = users(config_file, "add", "carol", "--password-file", "-",
                      input="short\n")
    assert code == 2 and "at least" in out


def test_a_password_is_never_an_argument(config_file: Path) -> None:
    code, out = users(config_file, "add", "alice", "--password", PASSWORD)
    assert code == 2 and "No such option" in out
    code, out = users(config_file, "add", "alice", PASSWORD)
    assert code == 2 and "unexpected extra argument" in out
    code, out = users(config_file, "add", "--help")
    assert "--password-file" in out
    assert "--password " not in out and "--password=" not in out


def test_users_disable_and_remove(config_file: Path, sqlite_url: str) -> None:
    assert users(config_file, "add", NAME, "--password-file", "-",
                 input=PASSWORD + "\n")[0] == 0
    assert users(config_file, "disable", NAME) == (0, f"{NAME} disabled\n")
    assert not _verify(sqlite_url, NAME, PASSWORD)
    assert "disabled" in users(config_file, "list")[1]
    assert users(config_file, "disable", NAME, "--undo")[0] == 0
    assert _verify(sqlite_url, NAME, PASSWORD)
    assert users(config_file, "remove", NAME) == (0, f"{NAME} removed\n")
    code, out = users(config_file, "remove", NAME)
    assert code == 2 and "no account" in out


def test_the_demo_makes_an_operator_with_a_new_password_each_start(
        sqlite_sessions: sessionmaker[Session]) -> None:
    from ci.app.demo import DEMO_OPERATOR, make_demo_operator

    name, first = make_demo_operator(sqlite_sessions)
    again, second = make_demo_operator(sqlite_sessions)  # a restart on the same state dir
    assert name == again == DEMO_OPERATOR and first != second
    with sqlite_sessions() as s, s.begin():
        assert accounts.verify(s, DEMO_OPERATOR, first) is None
        account = accounts.verify(s, DEMO_OPERATOR, second)
        assert account is not None and account.may_act


def test_importing_the_module_hashes_nothing() -> None:
    # Every command that imports ci.accounts would otherwise pay an Argon2 hash.
    script = ("from ci import accounts\n"
              "assert accounts.dummy_hash.cache_info().currsize == 0\n"
              "first = accounts.dummy_hash()\n"
              "assert accounts.dummy_hash() is first\n"
              "print(first.split('$')[1])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "argon2id"
