"""Check one config file against the real oslo.config option definitions.

Runs inside the separate `.venv-oslo` (the 2023.1 releases' pins clash with
hyperv-ci's own dependencies), one process per file, started by `runners.oslo_check`. Standalone on
purpose: it imports nothing of hyperv-ci. Prints `{"problems": [...]}`.

    python -I oslo_check_worker.py --kind nova [--allowed-driver D ...] PATH
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import Any

from oslo_config import cfg

NAMESPACES = {
    "nova": ["nova.conf", "compute_hyperv", "os_win", "oslo.log", "oslo.messaging",
             "oslo.concurrency"],
    # Never a neutron namespace here: with networking_hyperv it raises
    # DuplicateOptError (polling_interval); the agent's own list is added below.
    "neutron-hyperv-agent": ["networking_hyperv", "os_win", "oslo.log", "oslo.messaging",
                             "oslo.concurrency"],
}

OptList = list[tuple[str, list[Any]]]


def _group_name(group: object) -> str:
    if group is None:
        return "DEFAULT"
    return group.name if isinstance(group, cfg.OptGroup) else str(group)


def load_opts(kind: str) -> OptList:
    """(group, options) pairs from the `oslo.config.opts` entry points."""
    wanted = NAMESPACES[kind]
    found = {ep.name: ep for ep in entry_points(group="oslo.config.opts") if ep.name in wanted}
    missing = [name for name in wanted if name not in found]
    if missing:
        raise SystemExit(f"option namespaces not installed: {missing}")
    result: OptList = []
    for name in wanted:
        for group, opts in found[name].load()():
            result.append((_group_name(group), list(opts)))
    if kind == "neutron-hyperv-agent":
        # What the agent's main() registers besides networking_hyperv's list.
        from neutron.conf.agent import securitygroups_rpc

        result.append(("SECURITYGROUP", list(securitygroups_rpc.security_group_opts)))
        # main() also registers neutron's core options, of which the agent conf
        # uses only `host` (it must equal nova's host for port binding). Their
        # module, neutron/conf/common.py, needs neutron-lib, oslo.db and
        # SQLAlchemy, which the pinned set leaves out: this is its definition.
        result.append(("DEFAULT", [cfg.HostAddressOpt("host", sample_default="example.domain")]))
    return result


def register(conf: cfg.ConfigOpts, opts: OptList) -> None:
    """Register copies (required=False, so auth-url cannot raise), skipping duplicates."""
    for group, group_opts in opts:
        for opt in group_opts:
            clone = copy.copy(opt)
            clone.required = False
            try:
                conf.register_opt(clone, group=None if group == "DEFAULT" else group)
            except cfg.DuplicateOptError:
                continue


def _key(section: str) -> str:
    return section if section == "DEFAULT" else section.lower()


def known_names(opts: OptList) -> tuple[dict[str, set[str]], dict[tuple[str, str], str]]:
    """Accepted keys per section, and deprecated (section, key) → the current name."""
    names: dict[str, set[str]] = {}
    deprecated: dict[tuple[str, str], str] = {}
    for group, group_opts in opts:
        for opt in group_opts:
            current = names.setdefault(_key(group), set())
            current.update({opt.name, opt.dest, opt.name.replace("-", "_")})
            for old in opt.deprecated_opts:
                old_group = _key(old.group or group)
                old_name = old.name or opt.name
                for spelling in {old_name, old_name.replace("-", "_")}:
                    names.setdefault(old_group, set()).add(spelling)
                    if (old_group, spelling) != (_key(group), opt.dest):
                        deprecated.setdefault((old_group, spelling), f"[{group}] {opt.dest}")
    return names, deprecated


def parse_sections(path: str) -> dict[str, dict[str, list[str]]]:
    """Section → key → values, with oslo's own parser (repeated sections, `%`)."""
    sections: dict[str, dict[str, list[str]]] = {}
    cfg.ConfigParser(path, sections).parse()
    return sections


def check_names(sections: dict[str, dict[str, list[str]]], opts: OptList) -> list[str]:
    names, deprecated = known_names(opts)
    problems = []
    for section, keys in sections.items():
        known = names.get(_key(section))
        if known is None:
            problems.append(f"[{section}]: unknown section")
            continue
        for key in keys:
            if key not in known:
                problems.append(f"[{section}] {key}: unknown option")
            elif (_key(section), key) in deprecated:
                problems.append(
                    f"[{section}] {key}: deprecated name, use {deprecated[(_key(section), key)]}"
                )
    return problems


def add_auth_plugin_opts(sections: dict[str, dict[str, list[str]]], opts: OptList) -> list[str]:
    """A section that names an auth_type also accepts that plugin's options."""
    from keystoneauth1 import exceptions, loading

    problems = []
    for section, keys in sections.items():
        values = keys.get("auth_type")
        if not values or section == "DEFAULT":
            continue
        try:
            plugin_opts = loading.get_auth_plugin_conf_options(values[-1])
        except exceptions.NoMatchingPlugin:
            problems.append(f"[{section}] auth_type: unknown plugin {values[-1]!r}")
            continue
        opts.append((section, list(plugin_opts)))
    return problems


def check_values(conf: cfg.ConfigOpts, path: str, opts: OptList) -> list[str]:
    try:
        conf(args=[], default_config_files=[path], use_env=False)
    except cfg.Error as exc:
        return [f"cannot load: {exc}"]
    problems = []
    seen: set[tuple[str, str]] = set()
    for group, group_opts in opts:
        for opt in group_opts:
            if (group, opt.dest) in seen:
                continue
            seen.add((group, opt.dest))
            try:
                holder = conf if group == "DEFAULT" else conf[group]
                getattr(holder, opt.dest)
            except (cfg.Error, ValueError) as exc:
                problems.append(f"[{group}] {opt.dest}: bad value: {exc}")
    return problems


def check_driver(conf: cfg.ConfigOpts, allowed: Iterable[str]) -> list[str]:
    allowed = list(allowed)
    driver = conf.compute_driver
    if driver not in allowed:
        return [f"[DEFAULT] compute_driver: {driver!r} is not a Hyper-V driver ({allowed})"]
    return []


def check_firewall(conf: cfg.ConfigOpts) -> list[str]:
    value = conf.SECURITYGROUP.firewall_driver
    names = {ep.name for ep in entry_points(group="neutron.agent.firewall_drivers")}
    if value and "." not in value and value not in names:
        return [f"[SECURITYGROUP] firewall_driver: {value!r} is not one of {sorted(names)}"]
    return []


def check(path: str, kind: str, allowed_drivers: list[str]) -> list[str]:
    """Every problem of the file at `path`."""
    opts = load_opts(kind)
    try:
        sections = parse_sections(path)
    except (cfg.ParseError, OSError) as exc:
        return [f"cannot parse: {exc}"]
    problems = add_auth_plugin_opts(sections, opts)
    conf = cfg.ConfigOpts()
    register(conf, opts)
    problems += check_names(sections, opts)
    problems += check_values(conf, path, opts)
    if problems:
        return problems
    if kind == "nova":
        problems += check_driver(conf, allowed_drivers)
    else:
        problems += check_firewall(conf)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=sorted(NAMESPACES), required=True)
    parser.add_argument("--allowed-driver", action="append", default=[])
    parser.add_argument("path")
    args = parser.parse_args(argv)
    problems = check(args.path, args.kind, args.allowed_driver)
    json.dump({"problems": problems}, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
