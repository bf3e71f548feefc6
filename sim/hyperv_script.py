"""What the simulated Hyper-V node reads from a script before answering it.

Two rules a real node enforces and the host model (sim/hyperv_host.py) needs:

- Without the Hyper-V role the Hyper-V PowerShell module is absent, so its
  cmdlets (`Get-VM`, `Get-VMSwitch`, ...) are not commands at all: a script
  that calls one outside a guard gets PowerShell's CommandNotFoundException.
  The module's cmdlets are those Microsoft documents under
  windows-powershell-docs docset/winserver2022-ps/Hyper-V (the catalog
  runners/ps_check.py reads).
- Bootstrap's files: downloaded with Invoke-WebRequest or uploaded by the
  worker, then refused unless Get-FileHash gives the configured SHA-256.

Pure functions of the script text, except `fetch`, which downloads.
"""

from __future__ import annotations

import hashlib
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache

import tree_sitter

from runners.powershell import node_text, parse_tree, walk
from runners.ps_check import catalog
from runners.windows_values import ARTEFACTS

# PowerShell's CommandNotFoundException, as Windows PowerShell 5.1 words it.
NOT_RECOGNIZED = (
    "{name} : The term '{name}' is not recognized as the name of a cmdlet, function, script "
    "file, or operable program. Check the spelling of the name, or if a path was included, "
    "verify that the path is correct and try again."
)
_GUARD_CALL = re.compile(r"Get-Module\b[^\n]*-ListAvailable[^\n]*'Hyper-V'", re.IGNORECASE)


@cache
def hyperv_cmdlets() -> frozenset[str]:
    """Lower-cased names of the Hyper-V module's cmdlets."""
    cmdlets = catalog()["cmdlets"]
    assert isinstance(cmdlets, dict)
    return frozenset(
        name.lower() for name, entry in cmdlets.items()
        if isinstance(entry, dict) and entry.get("module") == "Hyper-V"
    )


def _guard_names(root: tree_sitter.Node) -> set[str]:
    """Functions and variables whose value is `Get-Module -ListAvailable ... 'Hyper-V'`."""
    names: set[str] = set()
    for node in walk(root):
        if node.type == "function_statement" and _GUARD_CALL.search(node_text(node)):
            name = next((c for c in node.children if c.type == "function_name"), None)
            if name is not None:
                names.add(node_text(name).lower())
        elif node.type == "assignment_expression" and _GUARD_CALL.search(node_text(node)):
            names.add(node_text(node.children[0]).lower())
    return names


def _guarded(node: tree_sitter.Node, guards: set[str]) -> bool:
    """Inside the then-block of an `if` whose condition asks for the module."""
    child, parent = node, node.parent
    while parent is not None:
        if parent.type == "if_statement" and child.type == "statement_block":
            blocks = [c for c in parent.children if c.type == "statement_block"]
            condition = next((c for c in parent.children if c.type == "pipeline"), None)
            if blocks and blocks[0].id == child.id and condition is not None:
                text = node_text(condition).lower()
                negated = "-not" in text or "!" in text
                if not negated and (any(g in text for g in guards)
                                    or _GUARD_CALL.search(node_text(condition))):
                    return True
        child, parent = parent, parent.parent
    return False


def unguarded_hyperv_command(script: str) -> str | None:
    """The first Hyper-V module cmdlet the script would run without the role, if any."""
    root = parse_tree(script)
    guards = _guard_names(root)
    module = hyperv_cmdlets()
    for node in walk(root):
        if node.type != "command":
            continue
        name = next((c for c in node.children if c.type == "command_name"), None)
        if name is None or node_text(name).lower() not in module:
            continue
        if any(a.type == "function_statement" for a in _ancestors(node)):
            continue  # a definition runs nothing; its call sites are what count
        if not _guarded(node, guards):
            return node_text(name)
    return None


def _ancestors(node: tree_sitter.Node) -> Iterator[tree_sitter.Node]:
    parent = node.parent
    while parent is not None:
        yield parent
        parent = parent.parent


# ------------------------------------------------------------------ artefacts


@dataclass(frozen=True)
class Artefact:
    """One of bootstrap's files as the script names it (`$<Var>Url`, ...)."""

    key: str
    file_name: str
    url: str
    uploaded: str
    sha256: str


def artefacts(params: dict[str, str]) -> dict[str, Artefact]:
    """The script's artefact parameters by config key ('' where not configured)."""
    found = {}
    for key, var, file_name in ARTEFACTS:
        prefix = var.lower()
        found[key] = Artefact(key, file_name, params.get(prefix + "url", ""),
                              params.get(prefix + "uploaded", ""),
                              params.get(prefix + "sha256", ""))
    return found


def fetch(artefact: Artefact, destination: str,
          read_file: Callable[[str], bytes | None]) -> tuple[bytes | None, str]:
    """What Get-Artefact ends with: the file's bytes, or None and the error the script prints.

    The simulated node reaches only loopback (the lab's artefact server); any
    other host fails as an unreachable one does with Invoke-WebRequest.
    """
    if artefact.url:
        host = urllib.parse.urlsplit(artefact.url).hostname or ""
        if host not in ("127.0.0.1", "localhost", "::1"):
            return None, "Invoke-WebRequest : Unable to connect to the remote server"
        try:
            with urllib.request.urlopen(artefact.url, timeout=30) as response:  # noqa: S310
                data = response.read()
        except urllib.error.HTTPError as exc:
            return None, ("Invoke-WebRequest : The remote server returned an error: "
                          f"({exc.code}) {exc.reason}.")
        except (urllib.error.URLError, OSError):
            return None, "Invoke-WebRequest : Unable to connect to the remote server"
    elif artefact.uploaded:
        uploaded = read_file(artefact.uploaded)
        if uploaded is None:
            return None, (f"Get-FileHash : Cannot find path '{artefact.uploaded}' because it "
                          "does not exist.")
        data = uploaded
    else:
        return None, f"{destination} is missing and windows.{artefact.key} is not configured"
    actual = hashlib.sha256(data).hexdigest()
    if actual != artefact.sha256.lower():
        return None, (f"{artefact.key}: SHA-256 {actual} does not match the configured "
                      f"{artefact.sha256}")
    return data, ""


def list_items(script: str, variable: str) -> list[str]:
    """The single-quoted items of `$Variable = @( ... )`, one a line (as the templates write)."""
    match = re.search(rf"^\${re.escape(variable)} = @\(\n(.*?)^\)", script,
                      re.MULTILINE | re.DOTALL | re.IGNORECASE)
    if match is None:
        return []
    items = []
    for line in match.group(1).splitlines():
        line = line.strip().rstrip(",")
        if len(line) >= 2 and line[0] == line[-1] == "'":
            items.append(line[1:-1].replace("''", "'"))
    return items
