"""The values a `devstack-hyperv` job is rendered with, computed from config and change.

Pure functions of the job's config and the change under test: which compute
driver nova.conf names, the devstack plugins, image and data network of the
controller, the tempest include/exclude lists, the projects a Hyper-V node
installs, devstack's project variables, and the job's secrets.
They are separate from runners/render.py (which turns them into files through
Jinja2) so each decision can be read and tested on its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ci.changes import ChangeInfo
from ci.config import ConfigError, DevstackHypervJob, NodeConfig
from ci.errors import PermanentError
from runners.oslo_check import HYPERV_COMPUTE_DRIVERS, IN_TREE_HYPERV_DRIVERS

#: The secrets a render needs: keystone admin, service users, RabbitMQ, MySQL.
SECRET_KEYS = ("admin_password", "service_password", "rabbit_password", "database_password")

# devstack's `<VAR>_REPO` / `<VAR>_BRANCH` names for projects it clones itself
# (stackrc's GITREPO/GITBRANCH table). networking-hyperv is not one of them: it
# comes in through its own devstack plugin (see `devstack_plugins`).
DEVSTACK_PROJECTS = {
    "openstack/nova": "NOVA",
    "openstack/neutron": "NEUTRON",
    "openstack/keystone": "KEYSTONE",
    "openstack/glance": "GLANCE",
    "openstack/placement": "PLACEMENT",
    "openstack/cinder": "CINDER",
    "openstack/tempest": "TEMPEST",
    "openstack/requirements": "REQUIREMENTS",
}

_PLAIN_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_RELEASE_RE = re.compile(r"^(?:stable|unmaintained)/(?:(\d{4})\.(\d)|([a-z][a-z]+))$")


class RenderError(PermanentError):
    """The job cannot be rendered for these inputs (the message says why)."""


def in_tree_driver_available(branch: str) -> bool:
    """Whether nova's in-tree Hyper-V driver exists on `branch`.

    nova removed it in 2024.1 (29.0.0, "Remove the Hyper-V driver",
    releasenotes/notes/remove-hyperv-94d5bfd8a539fe9f.yaml); 2023.2 and every
    lettered release (up to zed) still carry nova/virt/hyperv/.
    """
    match = _RELEASE_RE.match(branch)
    if match is None:
        return False  # master and feature branches are past 2023.2
    if match.group(3):
        return True
    return (int(match.group(1)), int(match.group(2))) <= (2023, 2)


def compute_driver_for(job: DevstackHypervJob, change: ChangeInfo) -> str:
    """The compute_driver nova.conf names for this change.

    The changed code must be the code that runs: a nova change runs nova's own
    in-tree driver (compute-hyperv's `compute_hyperv.driver.HyperVDriver`
    never imports nova.virt.hyperv), a compute-hyperv change runs
    compute-hyperv, and every other project runs the configured driver.
    """
    if job.compute_driver not in HYPERV_COMPUTE_DRIVERS:
        raise RenderError(f"compute_driver {job.compute_driver!r} is not a Hyper-V driver")
    if change.project == "openstack/nova":
        if not in_tree_driver_available(change.branch):
            raise RenderError(
                f"a nova change on {change.branch!r} cannot be tested: nova removed its "
                "in-tree Hyper-V driver in 2024.1; only branches up to 2023.2 have "
                "nova/virt/hyperv (filter the project's branches in the config)")
        configured = job.compute_driver
        return configured if configured in IN_TREE_HYPERV_DRIVERS else IN_TREE_HYPERV_DRIVERS[0]
    driver = job.compute_driver
    if change.project == "openstack/compute-hyperv":
        driver = "compute_hyperv.driver.HyperVDriver"
    if driver not in HYPERV_COMPUTE_DRIVERS:
        raise RenderError(f"compute_driver {driver!r} is not a Hyper-V driver")
    if driver in IN_TREE_HYPERV_DRIVERS and not in_tree_driver_available(change.branch):
        raise RenderError(f"nova's in-tree Hyper-V driver does not exist on {change.branch!r}")
    return driver


@dataclass(frozen=True)
class DevstackPlugin:
    """One `enable_plugin NAME URL REF` line of local.conf."""

    name: str
    url: str
    ref: str


def devstack_plugins(job: DevstackHypervJob, change: ChangeInfo, dest: str,
                     local_branch: str, branch: str) -> list[DevstackPlugin]:
    """The devstack plugins the controller needs.

    networking-hyperv's devstack/plugin.sh (there since 6.0.0, pike) runs
    `setup_develop` in the stack/install phase: that is what puts the ML2
    `hyperv` mechanism driver into neutron-server's environment. A change to
    networking-hyperv itself is already checked out at $DEST/networking-hyperv
    (prepare-checkout.sh); devstack's git_clone leaves an existing checkout
    alone when RECLONE is off, so the plugin installs the change.
    """
    if change.project == "openstack/networking-hyperv":
        return [DevstackPlugin("networking-hyperv", f"{dest}/networking-hyperv", local_branch)]
    url = f"{job.git_base.rstrip('/')}/openstack/networking-hyperv"
    ref = job.networking_hyperv_ref or branch
    # local.conf carries no Gerrit text: the branch goes in only when it is a
    # plain ref name (every real release branch is).
    if not _PLAIN_REF_RE.match(ref) or ".." in ref:
        raise RenderError(f"branch {ref!r} cannot name networking-hyperv's plugin branch: "
                          "set networking_hyperv_ref")
    return [DevstackPlugin("networking-hyperv", url, ref)]


@dataclass(frozen=True)
class ImageSettings:
    """The guest image, as devstack uploads it and tempest then finds it."""

    url: str  # what IMAGE_URLS gets (file:// for a path on the controller)
    file_name: str  # DEFAULT_IMAGE_FILE_NAME
    glance_name: str  # DEFAULT_IMAGE_NAME: the name upload_image gives it
    disk_format: str  # vhd or vhdx
    scenario_file: str  # tempest's [scenario] img_file


def image_settings(job: DevstackHypervJob) -> ImageSettings:
    """What local.conf says about the image (`job.image`, validated by the config).

    devstack's functions `upload_image` names a `*.vhd|*.vhdx` image by
    cutting the file name at its FIRST dot (`${image_fname#*.}` is the
    "extension"), so `cirros-0.6.2-x86_64-disk.vhdx` becomes `cirros-0`:
    DEFAULT_IMAGE_NAME must be that name, or lib/tempest's get_active_images
    never finds it. A URL is downloaded into $FILES ($TOP_DIR/files, stack.sh),
    where lib/tempest points [scenario] img_file; a path is used in place.
    """
    source = job.image
    file_name = source.rsplit("/", 1)[-1]
    disk_format = file_name.rsplit(".", 1)[-1].lower()
    if source.startswith("/"):
        url, scenario = f"file://{source}", source
    elif source.startswith("file://"):
        url, scenario = source, source.removeprefix("file://")
    else:
        url, scenario = source, f"{job.devstack_dir}/files/{file_name}"
    return ImageSettings(url=url, file_name=file_name, glance_name=file_name.split(".", 1)[0],
                         disk_format=disk_format, scenario_file=scenario)


def controller_network(job: DevstackHypervJob, controller: NodeConfig) -> tuple[str, str | None]:
    """(VLAN range, data interface) of this controller: its own settings, else the job's range."""
    return controller.vlan_range or job.vlan_range, controller.data_interface


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


def windows_projects(job: DevstackHypervJob, change: ChangeInfo) -> list[str]:
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
