"""Check rendered nova.conf / neutron_hyperv_agent.conf against the real option
definitions of the 2023.1 releases (the last to carry the Hyper-V code).

The definitions live in a separate virtualenv (`make oslo-venv`): their pins
clash with ours. Each file is checked in its own subprocess running
`oslo_check_worker.py`, because importing networking_hyperv monkey-patches
the process and the two option sets cannot share one `ConfigOpts`.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ci.errors import PermanentError

if TYPE_CHECKING:
    from runners.render import RenderedJob

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("oslo_check_worker.py")
DEFAULT_PYTHON = ".venv-oslo/bin/python"
TIMEOUT = 120

# nova loads `nova.virt.<compute_driver>`; a plain StrOpt, so checked by list.
IN_TREE_HYPERV_DRIVERS = ("hyperv.HyperVDriver", "hyperv.driver.HyperVDriver")
HYPERV_COMPUTE_DRIVERS = ("compute_hyperv.driver.HyperVDriver", *IN_TREE_HYPERV_DRIVERS)

Kind = Literal["nova", "neutron-hyperv-agent"]
#: Which check a rendered file name gets.
CONFIG_KINDS: Mapping[str, Kind] = {
    "nova.conf": "nova",
    "neutron_hyperv_agent.conf": "neutron-hyperv-agent",
}


class OsloCheckError(PermanentError):
    """The checker itself could not run (missing virtualenv, crash)."""


def _python_path(python: str | Path) -> Path:
    path = Path(python)
    return path if path.is_absolute() else ROOT / path


def check_config_file(
    path: str | Path, kind: Kind, python: str | Path = DEFAULT_PYTHON
) -> list[str]:
    """The problems of one config file ([] when every section, option and value
    is known and valid, and nova's compute_driver is a Hyper-V driver).

    `python` is the interpreter of the checker's virtualenv; a relative path is
    taken from the project root. Raises OsloCheckError when it cannot run.
    """
    interpreter = _python_path(python)
    if not interpreter.exists():
        raise OsloCheckError(
            f"{interpreter} does not exist: build the checker's virtualenv with `make oslo-venv`"
        )
    args = [str(interpreter), "-I", str(WORKER), "--kind", kind]
    if kind == "nova":
        for driver in HYPERV_COMPUTE_DRIVERS:
            args += ["--allowed-driver", driver]
    args.append(str(Path(path).resolve()))
    try:
        proc = subprocess.run(
            args, capture_output=True, text=True, encoding="utf-8", timeout=TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OsloCheckError(f"the option check of {path} did not run: {exc}") from exc
    try:
        if proc.returncode != 0:
            raise ValueError(f"exit status {proc.returncode}")
        problems = json.loads(proc.stdout)["problems"]
    except (ValueError, KeyError, TypeError) as exc:
        tail = proc.stderr.strip()[-2000:]
        raise OsloCheckError(f"the option check of {path} failed ({exc}): {tail}") from None
    logger.debug("option check of %s: %d problems", path, len(problems))
    return [str(p) for p in problems]


def check_rendered(
    rendered: RenderedJob, python: str | Path = DEFAULT_PYTHON
) -> dict[str, list[str]]:
    """Check every nova.conf and neutron_hyperv_agent.conf of a rendered job,
    in parallel; maps file name → problems (only files that were checked)."""
    todo = [
        (name, CONFIG_KINDS[item.step])
        for name, item in rendered.files.items()
        if item.step in CONFIG_KINDS
    ]
    with tempfile.TemporaryDirectory(prefix="hyperv-ci-oslo-") as tmp:
        for name, _kind in todo:
            (Path(tmp) / name).write_text(rendered[name], encoding="utf-8")
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {
                name: pool.submit(check_config_file, Path(tmp) / name, kind, python)
                for name, kind in todo
            }
            return {name: future.result() for name, future in futures.items()}
