"""`tempest run` stand-in: a real stestr run of the bundled suite.

Options map onto stestr as tempest maps them: `--regex R` is a filter,
`--exclude-list/--include-list/--load-list FILE`, `--serial`,
`--concurrency N`, `--subunit` (the v2 stream on stdout). As tempest does
(tempest/cmd/run.py, TempestRun.take_action), stestr runs in this process
through its Python API, `stestr.commands.run_command`, not its command line:
the same selection, workers and stream, without a second interpreter and
cliff's start-up (a few tenths of a second a run). The run happens
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
import sys
from typing import Any

from sim.devstack_node import die, load_node, log
from sim.devstack_node.tempest_install import FLAKY_STATE


def stestr_argv(python: str, args: argparse.Namespace) -> list[str]:
    """The stestr command line equivalent to a `tempest run` one (for the log)."""
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


def stestr_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """`stestr.commands.run_command`'s arguments for a `tempest run` command line
    (what stestr's own `run` command passes for the same options)."""
    return {"subunit_out": args.subunit, "serial": args.serial,
            "concurrency": 0 if args.serial else args.concurrency,
            "exclude_list": args.exclude_list, "include_list": args.include_list,
            "load_list": args.load_list, "filters": [args.regex] if args.regex else None,
            "pretty_out": not args.subunit}


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
    # The test workers stestr starts inherit these.
    os.environ.update(HYPERV_CI_LAB_DIR=str(node.lab_dir), PYTHONIOENCODING="utf-8",
                      HYPERV_CI_FLAKY_STATE=str(node.root.joinpath(*FLAKY_STATE)))
    log(node.logs_dir / "tempest.log", "INFO tempest [-] running: " + shlex.join(command[1:]))
    os.chdir(node.tempest_dir)  # where .stestr.conf and the repository are
    from stestr.commands import run_command  # imported once the cloud is known to be up

    code = run_command(stdout=sys.stdout, **stestr_kwargs(args))
    sys.stdout.flush()
    log(node.logs_dir / "tempest.log", f"INFO tempest [-] stestr exited with {code}")
    raise SystemExit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
