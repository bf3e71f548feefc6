"""`tempest run` stand-in: a real stestr run of the bundled suite.

Options map onto stestr as tempest maps them: `--regex R` is a filter,
`--exclude-list/--include-list/--load-list FILE`, `--serial`,
`--concurrency N`, `--subunit` (the v2 stream on stdout). The run happens
in the node's tempest directory with the CI's own Python; the lab directory
is passed to the tests (`HYPERV_CI_LAB_DIR`) for injected failures, and the
directory where flaky tests remember their first failure
(`HYPERV_CI_FLAKY_STATE`, reset by every stack.sh). A line per run goes to
`logs/tempest.log`. stack.sh installs this stand-in where devstack installs
tempest (`sim.devstack_node.tempest_install`), never on openrc's PATH.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

from sim.devstack_node import die, load_node, log
from sim.devstack_node.tempest_install import FLAKY_STATE


def stestr_argv(python: str, args: argparse.Namespace) -> list[str]:
    """The stestr command line equivalent to a `tempest run` one."""
    argv = [python, "-m", "stestr", "run"]
    if args.subunit:
        argv.append("--subunit")
    if args.serial:
        argv.append("--serial")
    elif args.concurrency:
        argv += ["--concurrency", str(args.concurrency)]
    for flag in ("exclude_list", "include_list", "load_list"):
        value = getattr(args, flag)
        if value:
            argv += ["--" + flag.replace("_", "-"), value]
    if args.regex:
        argv.append(args.regex)
    return argv


def main(argv: list[str]) -> None:
    node = load_node(argv[0])
    parser = argparse.ArgumentParser(prog="tempest")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--subunit", action="store_true")
    run.add_argument("--serial", action="store_true")
    run.add_argument("--concurrency", type=int, default=0)
    run.add_argument("--regex")
    run.add_argument("--exclude-list")
    run.add_argument("--include-list")
    run.add_argument("--load-list")
    args = parser.parse_args(argv[1:])
    if not node.stacked_file.exists():
        die("tempest: the cloud is not reachable (Connection refused): run stack.sh first")
    # Relative list files are relative to where tempest was started, as for the real one.
    for flag in ("exclude_list", "include_list", "load_list"):
        if getattr(args, flag):
            setattr(args, flag, os.path.abspath(getattr(args, flag)))
    command = stestr_argv(node.python, args)
    env = dict(os.environ, HYPERV_CI_LAB_DIR=str(node.lab_dir), PYTHONIOENCODING="utf-8",
               HYPERV_CI_FLAKY_STATE=str(node.root.joinpath(*FLAKY_STATE)))
    log(node.logs_dir / "tempest.log", "INFO tempest [-] running: " + shlex.join(command[1:]))
    code = subprocess.call(command, cwd=node.tempest_dir, env=env)
    log(node.logs_dir / "tempest.log", f"INFO tempest [-] stestr exited with {code}")
    raise SystemExit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
