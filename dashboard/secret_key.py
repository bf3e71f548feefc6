"""The key that signs the dashboard's session cookies: made once, kept in a file.

A key that changed at each start would log every operator out and void every
open form's CSRF token. So the first start writes 32 random bytes (hex) to
`dashboard.secret_key_file` — by default `$XDG_STATE_HOME/hyperv-ci/
dashboard-secret-key` (`~/.local/state/...`) — with mode 0600, and every later
start, and every other dashboard process sharing the file, reads it back.
`HYPERV_CI_SECRET_KEY` in the environment overrides the file.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from ci.config import ConfigError, DashboardConfig

logger = logging.getLogger(__name__)

SECRET_KEY_ENV = "HYPERV_CI_SECRET_KEY"  # noqa: S105 - a variable name, not a key
MIN_KEY_LENGTH = 32


def default_path() -> Path:
    """Where the key lives when the configuration names no file (XDG's state dir)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "hyperv-ci" / "dashboard-secret-key"


def secret_key(dashboard: DashboardConfig) -> str:
    """The environment's key, else the configured (or default) file's, made if missing."""
    from_env = os.environ.get(SECRET_KEY_ENV)
    if from_env:
        return from_env
    return load_or_create(dashboard.secret_key_file or default_path())


def load_or_create(path: Path) -> str:
    """The key in `path`; a new one written there (0600) if there is none."""
    path = path.expanduser()
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_hex(32)
    # Written under a temporary name, then linked into place: a second process
    # starting at the same moment reads a whole key or makes none (link fails).
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(key + "\n")
        try:
            os.link(temp, path)
        except FileExistsError:
            return _read(path)
    finally:
        temp.unlink(missing_ok=True)
    logger.info("dashboard: made a new session key in %s", path)
    return key


def _read(path: Path) -> str:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # Anyone who reads it can forge an operator's session.
        logger.warning("dashboard: %s is readable by others (mode %o): chmod 600 it",
                       path, stat.S_IMODE(mode))
    key = path.read_text(encoding="utf-8").strip()
    if len(key) < MIN_KEY_LENGTH:
        raise ConfigError(f"{path}: the session key is shorter than {MIN_KEY_LENGTH} characters")
    return key
