"""PowerShell text helpers: quoting data into scripts, and a syntax check.

Gerrit-derived text reaches a script only through `ps_quote` (a single-quoted
literal, where nothing is interpolated) or as a data file.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import tree_sitter
import tree_sitter_powershell

# Windows PowerShell 5.1 treats these as single quotes too; doubling each is
# the only escape inside a single-quoted string.
_SINGLE_QUOTES = ("'", "\u2018", "\u2019", "\u201a", "\u201b")


def ps_quote(value: object) -> str:
    """Render `value` as a PowerShell single-quoted string literal."""
    text = str(value)
    for quote in _SINGLE_QUOTES:
        text = text.replace(quote, quote * 2)
    return f"'{text}'"


@cache
def _parser() -> tree_sitter.Parser:
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))


def parse_tree(script: str) -> tree_sitter.Node:
    """The script's syntax tree (tree-sitter's PowerShell grammar)."""
    return _parser().parse(script.encode("utf-8")).root_node


def walk(node: tree_sitter.Node) -> Iterator[tree_sitter.Node]:
    """Every node below `node` (itself first), in source order."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(current.children))


def node_text(node: tree_sitter.Node) -> str:
    """The source text a node spans."""
    return (node.text or b"").decode("utf-8", "replace")


def syntax_errors(script: str) -> list[str]:
    """Where the script fails to parse as PowerShell ([] when it parses).

    A trailing `$null` statement works around the tree-sitter grammar's false
    positives on comment-only scripts and on a script ending in a `param()` block.
    """
    tree = _parser().parse((script + "\n$null\n").encode("utf-8"))
    if not tree.root_node.has_error:
        return []
    problems: list[str] = []
    stack = [tree.root_node]
    while stack and len(problems) < 10:
        node = stack.pop()
        if node.is_error or node.is_missing:
            row, col = node.start_point
            what = f"missing {node.type}" if node.is_missing else "unexpected text"
            problems.append(f"line {row + 1}, column {col + 1}: {what}")
            continue
        if node.has_error:
            stack.extend(reversed(node.children))
    return problems or ["syntax error"]
