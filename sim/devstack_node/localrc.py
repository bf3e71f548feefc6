"""What the simulated stack.sh reads from local.conf: the localrc settings and
the [[test-config|...]] section, parsed the way devstack's shell would see them.

Only the forms the job (and an operator's local.conf) uses are modelled:
`NAME=value` assignments (shell-quoted or not), `enable_service`,
`disable_service` and `enable_plugin` calls; other lines are ignored.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

_ASSIGN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)(\+?=)(.*)$")
_SECTION = re.compile(r"^\[\[\s*([^|\]]+?)\s*\|\s*([^\]]+?)\s*\]\]\s*$")


@dataclass(frozen=True)
class Plugin:
    name: str
    url: str
    ref: str


@dataclass
class Localrc:
    variables: dict[str, str] = field(default_factory=dict)
    plugins: list[Plugin] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def sections(text: str) -> dict[tuple[str, str], list[str]]:
    """`(phase, file)` → the lines of each `[[phase|file]]` section (meta-sections of
    devstack's inc/meta-config)."""
    found: dict[tuple[str, str], list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        match = _SECTION.match(line.strip())
        if match:
            current = found.setdefault((match.group(1), match.group(2)), [])
            continue
        if current is not None:
            current.append(line)
    return found


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:
        return []


def parse_localrc(lines: list[str]) -> Localrc:
    """The settings of the [[local|localrc]] lines."""
    result = Localrc()
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if match := _ASSIGN.match(line):
            name, op, raw = match.groups()
            words = _words(raw) if raw.strip() else [""]
            value = " ".join(words)
            if op == "+=":
                value = result.variables.get(name, "") + value
            result.variables[name] = value
            continue
        words = _words(line)
        if words and words[0] == "enable_plugin":
            # functions-common enable_plugin: `enable_plugin NAME URL [BRANCH]`,
            # the branch defaulting to master; a second one of a name dies.
            if len(words) < 3:
                result.errors.append(f"enable_plugin needs a name and a URL: {line.strip()}")
                continue
            name, url = words[1], words[2]
            ref = words[3] if len(words) > 3 else "master"
            if any(p.name == name for p in result.plugins):
                result.errors.append(
                    f"Plugin attempted to be enabled twice: {name} {url} {ref}")
                continue
            result.plugins.append(Plugin(name, url, ref))
    return result


def ini_values(lines: list[str]) -> dict[tuple[str, str], str]:
    """`(section, option)` → value of ini lines (a test-config section's body)."""
    values: dict[tuple[str, str], str] = {}
    section = ""
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1].strip()
            continue
        if "=" in stripped:
            key, value = stripped.split("=", 1)
            values[(section, key.strip())] = value.strip()
    return values
