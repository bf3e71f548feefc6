"""docker-compose.yml: the production-shaped deployment is coherent with the code.

No Docker engine runs here, so this checks what can be checked without one:
services, dependencies, commands that exist, and the config file it mounts.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from ci.cli import main
from ci.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def test_services_and_dependencies() -> None:
    services = compose()["services"]
    assert {"postgres", "listener", "worker", "dashboard", "logs"} <= set(services)
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"


def test_service_commands_are_real_cli_commands() -> None:
    for service in compose()["services"].values():
        command = service.get("command")
        if not command or command[0] != "hyperv-ci":
            continue
        args = command[1:]
        # `--help` after the command proves the command path exists without running it.
        result = CliRunner().invoke(main, [*args, "--help"])
        assert result.exit_code == 0, (command, result.output)


def test_mounted_config_is_valid_and_holds_no_secret() -> None:
    path = ROOT / "etc" / "compose" / "hyperv-ci.yaml"
    config = load_config(path)
    assert config.database.url.startswith("postgresql+psycopg://")
    assert make_url(config.database.url).password is None
    assert config.database.password_env == "HYPERV_CI_DATABASE_PASSWORD"
