"""Where the simulated stack.sh installs `tempest`: where devstack would, for the node's branch.

devstack never puts tempest on the PATH that `source openrc` gives a shell,
so the simulated node does not either (the stand-in `bin/` is that PATH):

* `$TEMPEST_DIR/.tox/tempest/bin/tempest` whenever the `tempest` service is
  enabled (devstack extras.d/80-tempest.sh runs lib/tempest install_tempest,
  `tox -r --notest -efull`; tempest's tox.ini: envdir = .tox/tempest), on
  every branch;
* additionally, when INSTALL_TEMPEST is True (lib/tempest: default "True" on
  master, "False" on stable branches), lib/tempest configure_tempest runs
  `setup_develop $TEMPEST_DIR`: into `$DEVSTACK_VENV/bin` when GLOBAL_VENV is
  True, else system-wide (inc/python get_python_exec_prefix: /usr/local/bin,
  which here is the stand-in `bin/`).

GLOBAL_VENV exists from 2023.2 (stackrc: `GLOBAL_VENV=$(trueorfalse True
GLOBAL_VENV)`, absent on unmaintained/2023.1 and older) and `local.conf` may
turn it off. The node's branch is `devstack_branch` in node.json.

Each stack also resets the per-build memory of the `tempest-flaky` fault (the
tests that already failed once), so every build starts fresh.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from sim.devstack_node import Node

DEFAULT_BRANCH = "master"
# Where the tempest stand-in remembers, per build, which flaky tests already failed.
FLAKY_STATE = ("state", "tempest-flaky")
_ASSIGN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_SERVICE_CALL = re.compile(r"^\s*(enable_service|disable_service)\s+(.*)$")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_RELEASE = re.compile(r"(?:^|/)(\d{4})\.(\d)$")
_SECTION = re.compile(r"^\[\[\s*([^|\]]+?)\s*\|\s*([^\]]+?)\s*\]\]\s*$")


@dataclass(frozen=True)
class TempestPlaces:
    """The tempest executables a stack leaves behind (none when tempest is disabled)."""

    paths: tuple[Path, ...]


def has_global_venv(branch: str) -> bool:
    """Whether devstack on `branch` knows GLOBAL_VENV (stackrc, from 2023.2).

    The releases before 2023.1 had names (stable/zed, unmaintained/yoga): older.
    """
    if m := _RELEASE.search(branch):
        return (int(m.group(1)), int(m.group(2))) >= (2023, 2)
    return branch == "master"


def install_tempest_default(branch: str) -> bool:
    """lib/tempest's INSTALL_TEMPEST default: "True" on master, "False" on stable branches."""
    return branch == "master"


def trueorfalse(default: bool, value: str | None) -> bool:
    """devstack functions-common trueorfalse: the accepted spellings, else the default."""
    if value in ("1", "yes", "Yes", "YES", "true", "True", "TRUE"):
        return True
    if value in ("0", "no", "No", "NO", "false", "False", "FALSE"):
        return False
    return default


def localrc_lines(text: str) -> list[str]:
    """The `[[local|localrc]]` section of a local.conf (devstack inc/meta-config)."""
    lines: list[str] = []
    inside = False
    for line in text.splitlines():
        if m := _SECTION.match(line.strip()):
            inside = (m.group(1), m.group(2)) == ("local", "localrc")
        elif inside:
            lines.append(line)
    return lines


def settings(lines: list[str], dest: str) -> tuple[dict[str, str], bool]:
    """The localrc variables (simple `$VAR` expansion) and whether tempest is enabled.

    stackrc's default ENABLED_SERVICES includes tempest; later lines win.
    """
    values: dict[str, str] = {"DEST": dest}
    tempest = True
    for line in lines:
        if m := _ASSIGN.match(line):
            try:
                words = shlex.split(m.group(2), comments=True)
            except ValueError:
                continue
            raw = words[0] if words else ""
            values[m.group(1)] = _VAR.sub(lambda v: values.get(v.group(1) or v.group(2), ""),
                                          raw)
            if m.group(1) == "ENABLED_SERVICES":
                tempest = "tempest" in values["ENABLED_SERVICES"].replace(",", " ").split()
        elif (m := _SERVICE_CALL.match(line)) and "tempest" in m.group(2).replace(
                ",", " ").split():
            tempest = m.group(1) == "enable_service"
    return values, tempest


def places(node: Node, lines: list[str], branch: str) -> TempestPlaces:
    """Where devstack on `branch` installs tempest for this localrc (pure)."""
    values, enabled = settings(lines, str(node.root))
    if not enabled:
        return TempestPlaces(())
    found = [node.tempest_dir / ".tox" / "tempest" / "bin" / "tempest"]
    if trueorfalse(install_tempest_default(branch), values.get("INSTALL_TEMPEST")):
        global_venv = has_global_venv(branch) and trueorfalse(True, values.get("GLOBAL_VENV"))
        if global_venv:
            data_dir = values.get("DATA_DIR") or f"{values['DEST']}/data"
            venv = values.get("DEVSTACK_VENV") or f"{data_dir}/venv"
            found.append(Path(venv) / "bin" / "tempest")
        else:
            found.append(node.root / "bin" / "tempest")
    return TempestPlaces(tuple(found))


def _wrapper(path: Path, python: str, root: Path) -> None:
    line = shlex.join([python, "-I", "-m", "sim.devstack_node.tempest", str(root)])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\nexec {line} \"$@\"\n", encoding="utf-8")
    path.chmod(0o755)


def install_tempest(node: Node) -> TempestPlaces:
    """Install the tempest stand-in where devstack would (stack.sh calls this)."""
    text = (node.devstack_dir / "local.conf").read_text(encoding="utf-8")
    branch = node_branch(node)
    where = places(node, localrc_lines(text), branch)
    for path in where.paths:
        _wrapper(path, node.python, node.root)
    shutil.rmtree(node.root.joinpath(*FLAKY_STATE), ignore_errors=True)
    return where


def node_branch(node: Node) -> str:
    """The simulated devstack's branch (node.json `devstack_branch`)."""
    data = json.loads((node.root / "node.json").read_text(encoding="utf-8"))
    return str(data.get("devstack_branch") or DEFAULT_BRANCH)
