"""Config loading: a good file loads; every bad key is named, without a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ci.app.cli import main
from ci.config import ConfigError, LocalJob, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def minimal() -> dict:
    return {
        "gerrit": {"host": "review.example.org", "username": "ci", "key_file": "id",
                   "known_hosts": "kh"},
        "projects": [{"name": "openstack/nova", "files": ["^nova/virt/hyperv/"],
                      "jobs": ["unit"]}],
        "jobs": {"unit": {"type": "local", "command": ["true"]}},
    }


def test_minimal_config_loads_with_defaults() -> None:
    config = parse_config(minimal())
    assert isinstance(config.jobs["unit"], LocalJob)
    assert config.gerrit.port == 29418
    assert config.projects[0].branches == [".*"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["gerrit"].pop("host"), "gerrit.host: Field required"),
        (lambda d: d["gerrit"].update(port=70000), "gerrit.port"),
        (lambda d: d["projects"][0].update(files=["(unclosed"]), "projects.0.files"),
        (lambda d: d["projects"][0].update(jobs=["nope"]), "unknown job 'nope'"),
        (lambda d: d["jobs"]["unit"].update(type="jenkins"), "jobs.unit"),
        (lambda d: d.update(surprise=1), "surprise: Extra inputs are not permitted"),
        (lambda d: d["jobs"]["unit"].update(command=[]), "jobs.unit.local.command"),
        (lambda d: d.update(nodes=[{"name": "hv", "label": "hyperv", "address": "x"}]),
         "a hyperv node needs a 'winrm' section"),
        (lambda d: d.update(nodes=[{"name": "hv", "label": "hyperv", "address": "x", "winrm": {
            "username": "u", "password": {"password_env": "P"}, "oem_codepage": "cp9999"}}]),
         "nodes.0.winrm.oem_codepage: Value error, unknown code page 'cp9999'"),
        (lambda d: d.update(nodes=[{"name": "hv", "label": "hyperv", "address": "x", "winrm": {
            "username": "u", "password": {}}}]),
         "nodes.0.winrm.password: Value error, name the password's source"),
        (lambda d: d.update(nodes=[{"name": "hv", "label": "hyperv", "address": "x", "winrm": {
            "username": "u", "password": {"password_env": "P", "password_file": "f"}}}]),
         "not both"),
        (lambda d: d.update(database={"url": "postgresql+psycopg://ci:hunter2@db/ci"}),
         "database.url: Value error, the URL holds a password"),
    ],
)
def test_bad_config_names_the_key(mutate, expected: str) -> None:
    data = minimal()
    mutate(data)
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert expected in str(err.value)


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ci.yaml"
    path.write_text(yaml.safe_dump(minimal()), encoding="utf-8")
    config = load_config(path)
    assert config.gerrit.key_file == tmp_path / "id"
    assert config.database.url == f"sqlite:///{tmp_path / '.demo/hyperv-ci.db'}"


def test_secret_resolves_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    data = minimal()
    data["nodes"] = [{"name": "hv-1", "label": "hyperv", "address": "10.0.0.2",
                      "winrm": {"username": "Administrator",
                                "password": {"password_env": "HV_PW"}}}]
    monkeypatch.setenv("HV_PW", "s3cr3t-pw")
    config = parse_config(data)
    assert config.secrets() == ["s3cr3t-pw"]
    # The YAML itself never holds the value.
    assert "s3cr3t-pw" not in repr(data)


@pytest.mark.parametrize("name", ["demo.yaml", "openstack-hyperv.yaml", "compose/hyperv-ci.yaml"])
def test_shipped_configs_are_valid(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(ROOT / "etc" / name)
    assert config.projects


def test_shipped_operator_config_watches_the_hyperv_code() -> None:
    config = load_config(ROOT / "etc" / "openstack-hyperv.yaml")
    nova = next(p for p in config.projects if p.name == "openstack/nova")
    assert "^nova/virt/hyperv/" in nova.files
    names = {p.name for p in config.projects}
    assert {"openstack/compute-hyperv", "openstack/networking-hyperv", "openstack/os-win"} <= names
    assert config.gerrit.host == "review.opendev.org"


def test_check_config_command(tmp_path: Path) -> None:
    # The files minimal() names, present (tests/ci/test_preflight.py: when they are not).
    (tmp_path / "id").write_text("a key\n", encoding="utf-8")
    (tmp_path / "kh").write_text("[review.example.org]:29418 ssh-ed25519 "
                                 "AAAAC3NzaC1lZDI1NTE5AAAAIKNN9Z8v9yMGK7aa5vW41BVkD8JOAoiSk1Nm9874kmJy\n",
                                 encoding="utf-8")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(minimal()), encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(main, ["check-config", str(good)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output

    bad_data = minimal()
    bad_data["gerrit"]["port"] = "not-a-port"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(bad_data), encoding="utf-8")
    result = runner.invoke(main, ["check-config", str(bad)])
    assert result.exit_code == 2
    assert "gerrit.port" in result.output
    assert "Traceback" not in result.output


def test_check_config_on_broken_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("gerrit: [unclosed\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["check-config", str(bad)])
    assert result.exit_code == 2
    assert "not valid YAML" in result.output


def test_a_file_that_is_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ci.yaml"
    path.write_bytes(yaml.safe_dump(minimal()).encode() + "# Zoë\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(path)


def test_password_files_resolve_against_the_file(tmp_path: Path) -> None:
    data = minimal()
    data["nodes"] = [{"name": "hv-1", "label": "hyperv", "address": "10.0.0.2",
                      "winrm": {"username": "u", "password": {"password_file": "pw.txt"}}}]
    (tmp_path / "pw.txt").write_text("file-Zoë-pw\n", encoding="utf-8")
    path = tmp_path / "ci.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    config = load_config(path)
    assert config.nodes[0].winrm is not None
    assert config.nodes[0].winrm.password.password_file == tmp_path / "pw.txt"
    assert config.secrets() == ["file-Zoë-pw"]


def test_database_password_from_a_file(tmp_path: Path) -> None:
    """A Compose secret (/run/secrets/...) holds the database password: read at
    connect time, relative to the config file, never from the URL in the YAML."""
    data = minimal()
    data["database"] = {"url": "postgresql+psycopg://hypervci@postgres:5432/hypervci",
                        "password_file": "db_password"}
    path = tmp_path / "ci.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    config = load_config(path)
    assert config.database.password_file == tmp_path / "db_password"
    with pytest.raises(ConfigError, match=r"cannot read .*db_password"):
        config.database.sqlalchemy_url()
    (tmp_path / "db_password").write_text("pä@ss/wörd\n", encoding="utf-8")
    from sqlalchemy.engine import make_url

    assert make_url(config.database.sqlalchemy_url()).password == "pä@ss/wörd"
    both = {**data["database"], "password_env": "DB_PW"}
    with pytest.raises(ConfigError, match="database: Value error, give password_env or "
                                          "password_file, not both"):
        parse_config({**data, "database": both})
