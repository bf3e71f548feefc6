"""The values a `devstack-hyperv` job is rendered with, computed from config and change.

Pure functions of the job's config and the change under test: which compute
driver nova.conf names, the tempest include/exclude lists, the projects a
Hyper-V node installs, devstack's project variables, and the job's secrets.
They are separate from runners/render.py (which turns them into files through
Jinja2) so each decision can be read and tested on its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ci.config import ConfigError, DevstackHypervJob
from runners.base import ChangeRef
from runners.oslo_check import HYPERV_COMPUTE_DRIVERS, IN_TREE_HYPERV_DRIVERS

#: The secrets a render needs: keystone admin, service users, RabbitMQ, MySQL.
SECRET_KEYS = ("admin_password", "service_password", "rabbit_password", "database_password")

# devstack's `<VAR>_REPO` / `<VAR>_BRANCH` names for projects it clones itself.
# networking-hyperv has no devstack plugin: the stack.sh wrapper installs it
# from NETWORKING_HYPERV_REPO through an extras.d hook (the ML2 driver).
DEVSTACK_PROJECTS = {
    "openstack/nova": "NOVA",
    "openstack/neutron": "NEUTRON",
    "openstack/keystone": "KEYSTONE",
    "openstack/glance": "GLANCE",
    "openstack/placement": "PLACEMENT",
    "openstack/cinder": "CINDER",
    "openstack/tempest": "TEMPEST",
    "openstack/requirements": "REQUIREMENTS",
    "openstack/networking-hyperv": "NETWORKING_HYPERV",
}

_RELEASE_RE = re.compile(r"^(?:stable|unmaintained)/(?:(\d{4})\.(\d)|([a-y][a-z]+))$")


class RenderError(Exception):
    """The job cannot be rendered for these inputs (the message says why)."""


def in_tree_driver_available(branch: str) -> bool:
    """Whether nova's in-tree Hyper-V driver exists on `branch` (removed after 2023.2)."""
    match = _RELEASE_RE.match(branch)
    if match is None:
        return False  # master and feature branches are past 2023.2
    if match.group(3):
        return True  # lettered releases (up to zed) all had it
    return (int(match.group(1)), int(match.group(2))) <= (2023, 2)


def compute_driver_for(job: DevstackHypervJob, change: ChangeRef) -> str:
    """The compute_driver nova.conf names for this change."""
    driver = job.compute_driver
    if change.project == "openstack/compute-hyperv":
        driver = "compute_hyperv.driver.HyperVDriver"
    if driver not in HYPERV_COMPUTE_DRIVERS:
        raise RenderError(f"compute_driver {driver!r} is not a Hyper-V driver")
    if driver in IN_TREE_HYPERV_DRIVERS and not in_tree_driver_available(change.branch):
        raise RenderError(f"nova's in-tree Hyper-V driver does not exist on {change.branch!r}")
    return driver


def tempest_exclude_file(job: DevstackHypervJob) -> str:
    """The exclude list for the serial pass: the job's exclude regexes."""
    return "".join(f"{regex}\n" for regex in job.tempest.exclude)


def tempest_parallel_exclude_file(job: DevstackHypervJob) -> str:
    """The exclude list for the parallel pass: excludes plus the serial tests."""
    return "".join(f"{regex}\n" for regex in [*job.tempest.exclude, *job.tempest.serial])


def tempest_serial_regex(job: DevstackHypervJob) -> str:
    """One regex selecting tests that match the include regex and a serial one."""
    if not job.tempest.serial:
        return ""
    serial = "|".join(job.tempest.serial)
    return f"^(?=.*?(?:{job.tempest.include_regex}))(?=.*?(?:{serial}))"


def windows_projects(job: DevstackHypervJob, change: ChangeRef) -> list[str]:
    """The projects installed on a Hyper-V node, the change's own included."""
    projects = ["openstack/nova", "openstack/neutron", *job.extra_projects, change.project]
    return list(dict.fromkeys(p for p in projects if p not in ("openstack/requirements",)))


def job_secrets(job: DevstackHypervJob) -> dict[str, str]:
    """Resolve the job's secrets now (RabbitMQ and MySQL reuse the service password)."""
    admin = job.admin_password.resolve()
    service = job.service_password.resolve()
    if not admin:
        raise ConfigError("jobs: devstack-hyperv admin_password is not configured")
    if not service:
        raise ConfigError("jobs: devstack-hyperv service_password is not configured")
    return {
        "admin_password": admin,
        "service_password": service,
        "rabbit_password": service,
        "database_password": service,
    }


def placeholder_secrets() -> dict[str, str]:
    """Obvious stand-ins for every secret, safe to write to disk."""
    return {key: f"PLACEHOLDER-{key.replace('_', '-')}" for key in SECRET_KEYS}


def checked_secrets(secrets: Mapping[str, str] | None) -> dict[str, str]:
    """Exactly `SECRET_KEYS`, each set and on one line (None: the placeholders)."""
    if secrets is None:
        return placeholder_secrets()
    unknown = set(secrets) - set(SECRET_KEYS)
    missing = [k for k in SECRET_KEYS if not secrets.get(k)]
    if unknown or missing:
        raise RenderError(f"secrets: missing {missing}, unknown {sorted(unknown)}")
    for key in SECRET_KEYS:
        if any(c in secrets[key] for c in "\r\n\x00"):
            raise RenderError(f"secrets: {key} holds a line break")
    return dict(secrets)
