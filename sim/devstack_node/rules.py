"""devstack's (and neutron's) rules the simulated stack.sh enforces: pure
functions of local.conf's settings and what the simulated upstream holds.

Each rule names the upstream file it reproduces. The messages are devstack's
own where devstack prints one; `die` in functions-common prints
`[ERROR] <file>:<line> <message>` on stderr and exits 1.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from sim.devstack_node.localrc import Plugin

DATA = Path(__file__).with_name("data") / "devstack-variables.json"

# neutron's built-in ML2 mechanism drivers (setup.cfg on unmaintained/2023.1,
# pyproject.toml on master: the neutron.ml2.mechanism_drivers entry points,
# test-only ones left out).
NEUTRON_MECHANISM_DRIVERS = frozenset({
    "openvswitch", "linuxbridge", "macvtap", "l2population", "sriovnicswitch", "ovn",
})
# Which plugin repository installs which extra ML2 driver: networking-hyperv's
# setup.cfg registers `hyperv` (networking_hyperv.neutron.ml2.mech_hyperv).
PLUGIN_MECHANISM_DRIVERS = {"networking-hyperv": frozenset({"hyperv"})}

# The releases, oldest first, as branch names write them.
RELEASES = ("pike", "queens", "rocky", "stein", "train", "ussuri", "victoria", "wallaby",
            "xena", "yoga", "zed", "2023.1", "2023.2", "2024.1", "2024.2", "2025.1", "2025.2")


@dataclass(frozen=True)
class UpstreamRepo:
    """What an upstream repository holds, as far as devstack plugins go."""

    first_release: str  # the oldest release branch with devstack/plugin.sh
    last_release: str  # the newest release branch with code (the project retired after)


# The simulated opendev: networking-hyperv added devstack/plugin.sh in 6.0.0
# (pike, "Adds devstack networking-hyperv plugin"); its last release is 14.0.0
# (2023.1), whose sdist still ships it; master was emptied when the Winstackers
# projects retired (nova's remove-hyperv release note), so master has no plugin.
# compute-hyperv and os-win never had a devstack plugin.
UPSTREAM = {"openstack/networking-hyperv": UpstreamRepo("pike", "2023.1")}
# Where the simulated upstream answers: opendev and its GitHub mirror.
UPSTREAM_HOSTS = ("opendev.org", "review.opendev.org", "github.com")


@dataclass(frozen=True)
class PluginResult:
    """A plugin fetched: `error` is devstack's die message, else whether plugin.sh ran."""

    plugin: Plugin
    error: str | None
    has_plugin_sh: bool
    output: list[str]


def _release_of(ref: str) -> str | None:
    match = re.fullmatch(r"(?:stable|unmaintained)/([a-z0-9.]+)", ref)
    return match.group(1) if match and match.group(1) in RELEASES else None


def _upstream_has(repo: UpstreamRepo, ref: str) -> tuple[bool, bool]:
    """(the ref exists, it has devstack/plugin.sh) in the simulated upstream."""
    if ref == "master":
        return True, False
    release = _release_of(ref)
    if release is None:
        return False, False
    index = RELEASES.index(release)
    exists = index <= RELEASES.index(repo.last_release)
    return exists, exists and index >= RELEASES.index(repo.first_release)


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], capture_output=True, check=False)


def fetch_plugin(plugin: Plugin, dest: Path, devstack_dir: Path) -> PluginResult:
    """devstack's fetch_plugins → git_clone_by_name for one plugin (functions-common).

    git_clone leaves an existing $DEST/<name> alone when RECLONE is off; else
    it clones the URL and fetches the branch, dying on a git failure through
    git_timed: `die $LINENO "git call failed: [git ...]"` (functions-common,
    line 709 on master). run_plugins then sources devstack/plugin.sh only if
    the checkout has one: a repository without it is silently no plugin.
    """
    where = dest / plugin.name
    fail = f"[ERROR] {devstack_dir}/functions-common:709 git call failed: [git %s]"
    if where.is_dir():
        return PluginResult(plugin, None, (where / "devstack" / "plugin.sh").is_file(), [])
    clone = f"clone --no-checkout {plugin.url} {where}"
    fetch = f"fetch origin {plugin.ref}"
    local = plugin.url.removeprefix("file://")
    if local.startswith("/"):
        if _git("-C", local, "rev-parse", "--git-dir").returncode != 0:
            return PluginResult(plugin, fail % clone, False,
                                [f"fatal: repository '{plugin.url}' does not exist"])
        if _git("-C", local, "rev-parse", "--verify", "-q",
                f"{plugin.ref}^{{commit}}").returncode != 0:
            return PluginResult(plugin, fail % fetch, False,
                                [f"fatal: couldn't find remote ref {plugin.ref}"])
        has = _git("-C", local, "cat-file", "-e", f"{plugin.ref}:devstack/plugin.sh")
        return PluginResult(plugin, None, has.returncode == 0, [])
    match = re.fullmatch(r"https?://([^/]+)/([^/]+/[^/]+?)(?:\.git)?/*", plugin.url)
    repo = UPSTREAM.get(match.group(2)) if match and match.group(1) in UPSTREAM_HOSTS else None
    if repo is None:
        return PluginResult(plugin, fail % clone, False,
                            [f"fatal: repository '{plugin.url}/' not found"])
    exists, has_plugin = _upstream_has(repo, plugin.ref)
    if not exists:
        return PluginResult(plugin, fail % fetch, False,
                            [f"fatal: couldn't find remote ref {plugin.ref}"])
    return PluginResult(plugin, None, has_plugin, [])


def missing_mechanism_drivers(variables: dict[str, str], installed: set[str]) -> list[str]:
    """Q_ML2_PLUGIN_MECHANISM_DRIVERS names no entry point provides: neutron's
    MechanismManager then raises SystemExit("The following mechanism drivers
    were not found: ...") (neutron/plugins/ml2/managers.py, _driver_not_found)."""
    names = [n for n in variables.get("Q_ML2_PLUGIN_MECHANISM_DRIVERS", "").split(",") if n]
    known = set(NEUTRON_MECHANISM_DRIVERS)
    for plugin in installed:
        known |= PLUGIN_MECHANISM_DRIVERS.get(plugin, frozenset())
    return [n for n in names if n not in known]


@dataclass(frozen=True)
class Image:
    name: str
    disk_format: str
    url: str


def _true(value: str | None, default: bool) -> bool:
    # functions-common trueorfalse: 1/yes/Yes/YES/true/True/TRUE (and the false set).
    if value is None or value == "":
        return default
    if value in ("1", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"):
        return True
    return False if value in ("0", "no", "No", "NO", "false", "False", "FALSE", "off",
                              "Off", "OFF") else default


CIRROS_VERSION = "0.6.3"  # stackrc on master


def images(variables: dict[str, str]) -> tuple[list[Image], str]:
    """The images stack.sh uploads and DEFAULT_IMAGE_NAME.

    stackrc: DOWNLOAD_DEFAULT_IMAGES (default True) appends the cirros qcow2
    (VIRT_DRIVER defaults to libvirt) to IMAGE_URLS and makes it
    DEFAULT_IMAGE_NAME unless one is set. functions upload_image: `*.img` is
    qcow2 named without `.img`; `*.vhd|*.vhdx` is named by cutting the file
    name at its first dot.
    """
    urls = [u for u in variables.get("IMAGE_URLS", "").split(",") if u]
    default_name = variables.get("DEFAULT_IMAGE_NAME", "")
    if _true(variables.get("DOWNLOAD_DEFAULT_IMAGES"), True):
        cirros = f"cirros-{CIRROS_VERSION}-x86_64-disk"
        default_name = default_name or cirros
        urls.append("https://github.com/cirros-dev/cirros/releases/download/"
                    f"{CIRROS_VERSION}/{cirros}.img")
    found = []
    for url in urls:
        file_name = url.rsplit("/", 1)[-1]
        if re.search(r"\.vhdx?(\.gz)?$", file_name):
            fmt = re.search(r"\.(vhdx?)(?:\.|$)", file_name)
            found.append(Image(file_name.split(".", 1)[0], fmt.group(1) if fmt else "vhd", url))
        elif file_name.endswith(".img"):
            found.append(Image(file_name.removesuffix(".img"), "qcow2", url))
        else:
            found.append(Image(file_name, "raw", url))
    return found, default_name


def tempest_image_refs(found: list[Image], default_name: str) -> tuple[Image, Image] | None:
    """lib/tempest: image_ref is the image named DEFAULT_IMAGE_NAME (else the first),
    image_ref_alt another one when there is (else the same)."""
    if not found:
        return None
    primary = next((i for i in found if i.name == default_name), found[0])
    alt = next((i for i in found if i is not primary), primary)
    return primary, alt


# What the Hyper-V computes boot: compute-hyperv's block_device_manager
# _TYPE_FOR_DISK_FORMAT (vhd, vhdx, iso); anything else raises nova's
# InvalidImageFormat ("Invalid image format '%(format)s'").
HYPERV_DISK_FORMATS = ("vhd", "vhdx", "iso")


@cache
def known_variables() -> frozenset[str]:
    """Every variable name devstack's source (any branch in the data file) or an
    enabled plugin reads (scripts/gen-devstack-variables)."""
    data = json.loads(DATA.read_text(encoding="utf-8"))
    names: set[str] = set()
    for group in ("branches", "plugins"):
        for values in data[group].values():
            names.update(values)
    return frozenset(names)


def unknown_variables(variables: dict[str, str]) -> list[str]:
    """localrc names neither devstack nor a plugin ever reads (a typo, or a
    setting of something else): devstack would silently ignore them."""
    known = known_variables()
    return sorted(n for n in variables if n not in known)


def skipped_extras(devstack_dir: Path) -> list[str]:
    """functions-common run_phase: every extras.d/*.sh but 80-tempest.sh is
    skipped, each with two warn lines (`[WARNING] <caller>:<message>`)."""
    extras = devstack_dir / "extras.d"
    if not extras.is_dir():
        return []
    lines = []
    for path in sorted(extras.glob("*.sh")):
        if path.name != "80-tempest.sh":
            lines += ["[WARNING] ./stack.sh:use of extras.d is no longer supported ",
                      f"[WARNING] ./stack.sh:processing of project {path.name} is skipped "]
    return lines
