"""The import direction of the packages (docs/architecture.md), read with `ast`.

The core (`ci/` without `ci/app/`) imports nothing above it; no product
package imports the simulators but the demo's wiring; nothing of the product
or the simulators imports the shell (`ci/app/`); benchmarks may, as tests do.
Modules are parsed, never imported, and imports inside functions count as
much as those at the top.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("ci", "listener", "runners", "dashboard")
ABOVE_THE_CORE = {"listener", "runners", "dashboard", "sim"}
SHELL = "ci.app"
# The one module of the product that may start the simulators.
SIM_ALLOWED = {"ci.app.demo"}
# Core imports still waiting for their fix, each named exactly; an entry that no
# longer matches a real import fails the test, so the list can only shrink.
CORE_ALLOWED: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Import:
    """One import statement (or import_module call) of a module."""

    module: str  # the importing module, dotted
    target: str  # what it imports, dotted and absolute
    line: int

    def __str__(self) -> str:
        return f"{self.module} (line {self.line}) imports {self.target}"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of `from <level dots><name> import ...` inside `module`."""
    if level == 0:
        return name or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def imports_of(root: Path, path: Path) -> list[Import]:
    """Every import in the file, top-level or nested, as absolute dotted names;
    `from a import b` yields both `a` and `a.b` (b may be a module)."""
    module = module_name(root, path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path.name == "__init__.py", node.level, node.module)
            found.append(Import(module, base, node.lineno))
            found += [Import(module, f"{base}.{alias.name}" if base else alias.name,
                             node.lineno) for alias in node.names if alias.name != "*"]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name)
                       and node.func.id in {"import_module", "__import__"}))):
            found.append(Import(module, node.args[0].value, node.lineno))
    return found


def all_imports(root: Path, packages: tuple[str, ...]) -> list[Import]:
    return [imp for package in packages if (root / package).is_dir()
            for path in sorted((root / package).rglob("*.py"))
            for imp in imports_of(root, path)]


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _top(name: str) -> str:
    return name.split(".")[0]


def core_violations(imports: list[Import]) -> set[tuple[str, str]]:
    """(a) core modules importing listener, runners, dashboard or sim."""
    return {(i.module, i.target) for i in imports
            if _within(i.module, "ci") and not _within(i.module, SHELL)
            and _top(i.target) in ABOVE_THE_CORE}


def sim_violations(imports: list[Import]) -> list[Import]:
    """(b) product modules importing sim, but for the demo's wiring."""
    return [i for i in imports if _top(i.module) in PRODUCT and _top(i.target) == "sim"
            and i.module not in SIM_ALLOWED]


def shell_violations(imports: list[Import]) -> list[Import]:
    """(c) modules of the product or the simulators, outside the shell, importing it.

    Benchmarks, like tests, drive the whole product (the demo's push-to-vote
    figure starts `hyperv-ci demo`): they may import the shell."""
    return [i for i in imports if _top(i.module) in (*PRODUCT, "sim")
            and not _within(i.module, SHELL) and _within(i.target, SHELL)]


# -- the real tree ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree() -> list[Import]:
    imports = all_imports(ROOT, (*PRODUCT, "sim", "bench"))
    assert any(_within(i.module, SHELL) for i in imports)  # the shell was found and read
    return imports


def _core_modules(imports: list[Import]) -> set[str]:
    return {i.module for i in imports if _within(i.module, "ci") and not _within(i.module, SHELL)}


def test_the_core_imports_nothing_above_it(tree: list[Import]) -> None:
    assert {"ci.config", "ci.models", "ci.db", "ci.queue", "ci.gerrit",
            "ci.report"} <= _core_modules(tree)
    found = core_violations(tree)

    def allowed(module: str, target: str) -> bool:
        return any(module == m and _within(target, t) for m, t in CORE_ALLOWED)
    unexpected = sorted(v for v in found if not allowed(*v))
    assert not unexpected, "the core imports above it:\n" + "\n".join(map(str, unexpected))
    stale = sorted((m, t) for m, t in CORE_ALLOWED
                   if not any(v[0] == m and _within(v[1], t) for v in found))
    assert not stale, f"no longer imported, remove from CORE_ALLOWED: {stale}"


def test_only_the_demo_imports_the_simulators(tree: list[Import]) -> None:
    found = sim_violations(tree)
    assert not found, "\n".join(map(str, found))


def test_nothing_imports_the_shell(tree: list[Import]) -> None:
    found = shell_violations(tree)
    assert not found, "\n".join(map(str, found))


# -- each check sees a violation (a tree made for it) -------------------------------------------

def _write(root: Path, files: dict[str, str]) -> list[Import]:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return all_imports(root, (*PRODUCT, "sim"))


def test_the_checks_see_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    imports = _write(tmp_path, {
        "ci/__init__.py": "",
        "ci/queue.py": "def f():\n    from runners.pool import reserve\n",
        "ci/report.py": "import dashboard.api as api\nfrom .app import cli\n",
        "ci/app/__init__.py": "",
        "ci/app/cli.py": "import sim.gerrit\nfrom . import demo\n",
        "ci/app/demo.py": "from sim.lab import SimLab\n",
        "listener/stream.py": "def g():\n    import importlib\n"
                              "    importlib.import_module('sim.faults')\n",
        "runners/worker.py": "from ci import app\n",
        "dashboard/server.py": "from ci.app.processes import run_dashboard\n",
    })
    assert core_violations(imports) == {("ci.queue", "runners.pool"),
                                        ("ci.queue", "runners.pool.reserve"),
                                        ("ci.report", "dashboard.api")}
    assert {(i.module, i.target) for i in sim_violations(imports)} == {
        ("ci.app.cli", "sim.gerrit"), ("listener.stream", "sim.faults")}
    assert {(i.module, i.target) for i in shell_violations(imports)} == {
        ("runners.worker", "ci.app"), ("ci.report", "ci.app"), ("ci.report", "ci.app.cli"),
        ("dashboard.server", "ci.app.processes"),
        ("dashboard.server", "ci.app.processes.run_dashboard")}
