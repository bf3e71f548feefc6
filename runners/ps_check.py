"""Check a PowerShell script's commands and parameters against Microsoft's definitions.

Pure functions over the script text. Every command a script invokes must
resolve as Windows PowerShell 5.1 resolves it (about_Command_Precedence:
alias, then function, then cmdlet, then external program): a function the
script defines, a cmdlet or alias of the catalog, a built-in function, or a
known native tool. Every named parameter must bind as the parameter binder
binds it (about_Parameters): case-insensitive, by name or alias or an
unambiguous prefix of one, the common parameters included
(about_CommonParameters). A literal argument of a parameter whose documented
values are a closed set must be one of them.

The catalog (runners/data/powershell-catalog.json) is generated from
Microsoft's reference pages by scripts/gen-powershell-catalog.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import tree_sitter

from runners.powershell import node_text, parse_tree, walk

CATALOG_PATH = Path(__file__).with_name("data") / "powershell-catalog.json"

# Programs the job's scripts may run by name (on PATH, or installed by bootstrap).
# Nothing here is looked up: a name missing from this list is an error, as it would be
# on a node where the program is not installed.
NATIVE_TOOLS = frozenset({
    "auditpol.exe", "bcdedit.exe", "certutil.exe", "cmd.exe", "curl.exe", "dism.exe",
    "findstr.exe", "git.exe", "hostname.exe", "icacls.exe", "ipconfig.exe", "msiexec.exe",
    "net.exe", "netsh.exe", "pip.exe", "powershell.exe", "python.exe", "reg.exe",
    "robocopy.exe", "route.exe", "sc.exe", "schtasks.exe", "secedit.exe", "shutdown.exe",
    "systeminfo.exe", "tar.exe", "taskkill.exe", "tasklist.exe", "w32tm.exe", "wevtutil.exe",
    "where.exe", "whoami.exe", "winrm.cmd", "wmic.exe", "xcopy.exe",
})
# Kinds of problem, named after the FullyQualifiedErrorId PowerShell gives each. The
# messages are PowerShell's, as Microsoft's pages quote them: about_Try_Catch_Finally
# ("The term '...' is not recognized ..."), about_PSItem ("A parameter cannot be found
# that matches parameter name ..."), learn/shell/using-aliases ("... is ambiguous.
# Possible matches include: -Filter -Force.").
COMMAND_NOT_FOUND = "CommandNotFoundException"
PARAMETER_NOT_FOUND = "NamedParameterNotFound"
AMBIGUOUS_PARAMETER = "AmbiguousParameter"
VALUE_NOT_IN_SET = "ParameterArgumentValidationError"
VALUE_NOT_ENUM = "CannotConvertArgumentNoMessage"
# about_CommonParameters: WhatIf and Confirm exist only where a cmdlet declares them.
_RISK_PARAMETERS = ("WhatIf", "Confirm")


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based, as PowerShell's "At line:N char:M"
    column: int
    command: str  # the command as written
    kind: str  # one of the constants above
    message: str  # PowerShell's own message
    parameter: str = ""  # the parameter as written, without its dash
    cmdlet: str = ""  # the resolved cmdlet or function name


@dataclass(frozen=True)
class Command:
    """What a command name resolved to, and the parameters it binds."""

    name: str
    kind: str  # cmdlet | function | builtin | native
    parameters: dict[str, str] = field(default_factory=dict)  # lower-cased name/alias -> name
    values: dict[str, tuple[tuple[str, ...], str]] = field(default_factory=dict)  # name -> set
    checked: bool = True  # False: unknown parameters are not an error (see _functions)


@dataclass(frozen=True)
class ScriptEnd:
    """A top-level `exit N` or `throw`: how the script ends when it gets there."""

    kind: str  # exit | throw
    exit_code: int
    message: str  # the thrown text ('' for exit)
    line: int
    column: int
    source: str  # the statement as written


@cache
def catalog() -> dict[str, object]:
    return json.loads(CATALOG_PATH.read_text(encoding="utf-8"))


@cache
def _common_parameters() -> dict[str, str]:
    common = catalog()["common"]
    assert isinstance(common, dict)
    found: dict[str, str] = {}
    for name, aliases in common.items():
        if name in _RISK_PARAMETERS:
            continue
        for key in (name, *aliases):
            found[key.lower()] = name
    return found


@cache
def _cmdlet(name: str) -> Command | None:
    cmdlets = catalog()["cmdlets"]
    assert isinstance(cmdlets, dict)
    entry = cmdlets.get(name) or next(
        (v for k, v in cmdlets.items() if k.lower() == name.lower()), None)
    if entry is None:
        return None
    canonical = name if name in cmdlets else next(k for k in cmdlets if k.lower() == name.lower())
    parameters = dict(_common_parameters())
    values: dict[str, tuple[tuple[str, ...], str]] = {}
    for pname, info in entry["params"].items():
        for key in (pname, *info.get("aliases", ())):
            parameters[key.lower()] = pname
        if info.get("values"):
            values[pname] = (tuple(info["values"]), info.get("type", ""))
    # Provider dynamic parameters (about_FileSystem_Provider, "Dynamic parameters"):
    # our scripts work on the file system, so its parameters bind on the cmdlets it lists.
    providers = catalog()["providers"]
    assert isinstance(providers, dict)
    for dynamic in providers.values():
        for pname, info in dynamic.items():
            if canonical in info["cmdlets"] and pname.lower() not in parameters:
                parameters[pname.lower()] = pname
                if info["values"]:
                    values[pname] = (tuple(info["values"]), info["type"])
    return Command(canonical, "cmdlet", parameters, values)


def _literal(node: tree_sitter.Node | None) -> str | None:
    """The value of a bareword or constant string argument (None for anything computed)."""
    while node is not None and node.type in ("array_literal_expression", "unary_expression",
                                             "string_literal") and node.child_count == 1:
        node = node.children[0]
    if node is None:
        return None
    text = node_text(node)
    if node.type == "generic_token":
        return text
    if node.type == "verbatim_string_characters" and len(text) >= 2:
        return text[1:-1].replace("''", "'")
    if node.type == "expandable_string_literal" and not re.search(r"[$`]", text):
        return text[1:-1]
    return None


def _functions(root: tree_sitter.Node) -> dict[str, Command]:
    """The script's own functions, by lower-cased name.

    about_Functions_CmdletBindingAttribute: "In functions that have the
    CmdletBinding attribute, unknown parameters ... cause parameter binding to
    fail", and PowerShell adds the common parameters to them; a [Parameter()]
    attribute makes a function advanced too. A simple function hands undeclared
    parameters to $args (about_Automatic_Variables), so nothing is refused there.
    """
    found: dict[str, Command] = {}
    for node in walk(root):
        if node.type != "function_statement":
            continue
        name_node = next((c for c in node.children if c.type == "function_name"), None)
        if name_node is None:
            continue
        name = re.sub(r"^(global|script|local|private):", "", node_text(name_node), flags=re.I)
        parameters: dict[str, str] = {}
        advanced = False
        for part in walk(node):
            if part is not node and part.type == "function_statement":
                break  # a nested function's parameters are its own
            if part.type == "attribute_name":
                advanced |= node_text(part).lower() in ("cmdletbinding", "parameter")
            if part.type == "script_parameter":
                var = next((c for c in part.children if c.type == "variable"), None)
                if var is None:
                    continue
                pname = node_text(var).lstrip("$")
                parameters[pname.lower()] = pname
                for attr in (a for a in walk(part) if a.type == "attribute"):
                    if node_text(attr).lower().startswith("[alias("):
                        for arg in (a for a in walk(attr) if a.type == "string_literal"):
                            alias = _literal(arg)
                            if alias:
                                parameters[alias.lower()] = pname
        if advanced:
            parameters = {**_common_parameters(), **parameters}
        found.setdefault(name.lower(), Command(name, "function", parameters, checked=advanced))
    return found


def _module_of(cmdlet: str) -> str:
    cmdlets = catalog()["cmdlets"]
    assert isinstance(cmdlets, dict)
    return str(cmdlets[cmdlet]["module"]).lower()


def _is_path(name: str) -> bool:
    """A program or script named by its path (`.\\x.ps1`, `C:\\bin\\x.exe`), not by name."""
    if "/" in name or name.startswith((".", "$", "~")) or re.match(r"^[A-Za-z]:", name):
        return True
    module, _, bare = name.rpartition("\\")
    if not module:
        return False
    found = _cmdlet(bare)
    return found is None or _module_of(found.name) != module.lower()


def resolve_command(name: str, functions: dict[str, Command]) -> Command | None:
    """What `name` runs, in about_Command_Precedence's order; None if nothing."""
    lowered = name.lower()
    aliases = catalog()["aliases"]
    builtins = catalog()["functions"]
    assert isinstance(aliases, dict) and isinstance(builtins, dict)
    if lowered in aliases:
        return _cmdlet(aliases[lowered])
    if lowered in functions:
        return functions[lowered]
    for builtin, alias in builtins.items():
        if lowered == builtin.lower() or lowered in (a.lower() for a in alias):
            # Built-in functions are known by name only; their parameters are not catalogued.
            return Command(builtin, "builtin", checked=False)
    module, _, bare = name.rpartition("\\")
    if module and (found := _cmdlet(bare)) and _module_of(found.name) == module.lower():
        return found  # Module\Cmdlet, a module-qualified name
    if found := _cmdlet(name):
        return found
    if lowered in NATIVE_TOOLS or f"{lowered}.exe" in NATIVE_TOOLS:
        return Command(name, "native", checked=False)
    return None


def resolve_parameter(command: Command, given: str) -> tuple[str | None, list[str]]:
    """(parameter, []) if `given` binds; (None, candidates) if not: several are ambiguous."""
    lowered = given.lower()
    if lowered in command.parameters:  # an exact name or alias wins over any prefix
        return command.parameters[lowered], []
    matches = sorted({target for key, target in command.parameters.items()
                      if key.startswith(lowered)})
    if len(matches) == 1:
        return matches[0], []
    return None, matches


def _argument_of(parameter: tree_sitter.Node) -> tree_sitter.Node | None:
    sibling = parameter.next_sibling
    while sibling is not None and sibling.type == "command_argument_sep":
        sibling = sibling.next_sibling
    return sibling if sibling is not None and sibling.type != "command_parameter" else None


def _value_problem(command: Command, pname: str, value: str) -> tuple[str, str] | None:
    allowed, ptype = command.values.get(pname, ((), ""))
    if not allowed or "," in value or value.lstrip("-").isdigit():
        return None  # flags combinations and numeric enum values are not checked
    if value.lower() in (v.lower() for v in allowed):
        return None
    if ptype.lower().removeprefix("system.").rstrip("[]") == "string":
        return VALUE_NOT_IN_SET, (  # a [ValidateSet()] string parameter
            f"Cannot validate argument on parameter '{pname}'. The argument \"{value}\" does "
            f"not belong to the set \"{','.join(allowed)}\" specified by the ValidateSet "
            "attribute. Supply an argument that is in the set and then try the command again.")
    return VALUE_NOT_ENUM, (  # an enumeration-typed parameter
        f"Cannot bind parameter '{pname}'. Cannot convert value \"{value}\" to type "
        f"\"{ptype}\". Error: \"Unable to match the identifier name {value} to a valid "
        "enumerator name. Specify one of the following enumerator names and try again: "
        f"{', '.join(allowed)}\"")


def _command_name(node: tree_sitter.Node) -> tuple[str, tree_sitter.Node] | None:
    """The name a `command` node invokes, or None when it is computed (`& $exe`)."""
    for child in node.children:
        if child.type == "command_name":
            return node_text(child), child
        if child.type == "command_name_expr":
            inner = child.children[0] if child.child_count == 1 else None
            if inner is not None and inner.type == "command_name":
                return node_text(inner), inner
            literal = _literal(inner) if inner is not None else None
            return (literal, inner) if literal and inner is not None else None
    return None


def check_script(script: str) -> list[Problem]:
    """Every command and named parameter of `script` that PowerShell would refuse."""
    root = parse_tree(script)
    functions = _functions(root)
    problems: list[Problem] = []
    for node in walk(root):
        if node.type != "command":
            continue
        named = _command_name(node)
        if named is None:
            continue
        name, name_node = named
        if _is_path(name):
            continue  # a script or program by path: whether it exists is runtime's business
        row, col = name_node.start_point
        command = resolve_command(name, functions)
        if command is None:
            problems.append(Problem(row + 1, col + 1, name, COMMAND_NOT_FOUND, (
                f"The term '{name}' is not recognized as the name of a cmdlet, function, "
                "script file, or operable program. Check the spelling of the name, or if a "
                "path was included, verify that the path is correct and try again.")))
            continue
        if not command.checked:
            continue
        problems.extend(_parameter_problems(node, name, command))
    return sorted(problems, key=lambda p: (p.line, p.column))


def _parameter_problems(node: tree_sitter.Node, name: str, command: Command) -> list[Problem]:
    problems: list[Problem] = []
    elements = next((c for c in node.children if c.type == "command_elements"), None)
    for part in elements.children if elements is not None else ():
        if part.type != "command_parameter":
            continue
        given = node_text(part)[1:].rstrip(":")
        if not re.match(r"^[A-Za-z_?]", given):
            continue
        row, col = part.start_point
        pname, candidates = resolve_parameter(command, given)
        if pname is None and candidates:
            problems.append(Problem(row + 1, col + 1, name, AMBIGUOUS_PARAMETER, (
                f"Parameter cannot be processed because the parameter name '{given}' is "
                "ambiguous. Possible matches include: "
                + " ".join(f"-{c}" for c in candidates) + "."), given, command.name))
        elif pname is None:
            problems.append(Problem(row + 1, col + 1, name, PARAMETER_NOT_FOUND,
                                    f"A parameter cannot be found that matches parameter name "
                                    f"'{given}'.", given, command.name))
        elif (value := _literal(_argument_of(part))) is not None and (
                found := _value_problem(command, pname, value)):
            problems.append(Problem(row + 1, col + 1, name, found[0], found[1], given,
                                    command.name))
    return problems


def script_end(script: str) -> ScriptEnd | None:
    """The first top-level `exit N` (N an integer literal) or `throw`, if any.

    Only the script's own statement list is looked at: an `exit` inside a
    function, `if` or loop depends on what runs, which nothing here evaluates.
    """
    root = parse_tree(script)
    statements = next((c for c in root.children if c.type == "statement_list"), None)
    for node in statements.children if statements is not None else ():
        if node.type != "flow_control_statement" or not node.children:
            continue
        keyword = node.children[0].type
        argument = node.children[1] if node.child_count > 1 else None
        row, col = node.start_point
        if keyword == "exit":
            text = node_text(argument).strip() if argument is not None else "0"
            if re.fullmatch(r"-?\d+", text):
                return ScriptEnd("exit", int(text), "", row + 1, col + 1, node_text(node))
        elif keyword == "throw":
            literal = _literal(_first_value(argument)) if argument is not None else None
            message = literal if literal is not None else (
                node_text(argument) if argument is not None else "ScriptHalted")
            return ScriptEnd("throw", 1, message, row + 1, col + 1, node_text(node))
    return None


def _first_value(node: tree_sitter.Node) -> tree_sitter.Node:
    """The innermost single child of a pipeline wrapping one value (`throw 'x'`)."""
    while node.child_count == 1 and node.type != "string_literal":
        node = node.children[0]
    return node
