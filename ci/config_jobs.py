"""The jobs a project runs: `local` and `devstack-hyperv` (with its tempest and
Windows settings), validated with the rest of the file by ci/config.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ci.config_base import (
    Secret,
    _check_image,
    _check_regex,
    _check_secret_given,
    _check_vlan_range,
    _Strict,
)


class LocalJob(_Strict):
    """Runs a command on the worker host: the simplest real job."""

    type: Literal["local"]
    command: list[str] = Field(min_length=1)
    timeout: int = Field(600, ge=1)
    voting: bool = True
    env: dict[str, str] = Field(default_factory=dict)


class TempestConfig(_Strict):
    include_regex: str = r"^tempest\."
    # IPv6 address assignment is not tested on Hyper-V: the real Hyper-V CI excluded it.
    exclude: list[str] = Field(
        default_factory=lambda: [r"tempest\.scenario\.test_network_v6\.TestGettingAddress"]
    )
    serial: list[str] = Field(
        default_factory=lambda: [r"\.test_resize", r"\.test_shelve", r"\.test_snapshot"]
    )
    concurrency: int = Field(4, ge=1)
    timeout: int = Field(5400, ge=1)
    # Re-runs of the tests that failed (serially, only those); a test that passes
    # on a re-run is recorded as flaky, not failed. 0: a first failure is final.
    rerun_failed: int = Field(1, ge=0, le=3)

    @field_validator("include_regex")
    @classmethod
    def _include(cls, value: str) -> str:
        return _check_regex(value)

    @field_validator("exclude", "serial")
    @classmethod
    def _lists(cls, values: list[str]) -> list[str]:
        return [_check_regex(v) for v in values]


_SHA256 = re.compile(r"^[0-9A-Fa-f]{64}$")
_UNC_REFUSED = (
    "a UNC path cannot be read over WinRM with NTLM (the node cannot authenticate to the "
    "share: the second hop); give {url, sha256} or {path, sha256} (a file on the worker host)"
)


def _is_unc(value: str) -> bool:
    return value.startswith("\\\\") or value.startswith("//")


class WindowsArtefact(_Strict):
    """A file a Hyper-V node needs, from an HTTP(S) URL or uploaded from the worker.

    Never a share: a UNC path fails over NTLM WinRM, because the node cannot
    pass the operator's credentials on to the file server (the "second hop";
    Microsoft's "Making the second hop in PowerShell Remoting"). Either way the
    node checks the SHA-256 before using the file.
    """

    url: str | None = None  # downloaded by the node (Invoke-WebRequest)
    path: Path | None = None  # a file on the worker host, uploaded over WinRM
    sha256: str | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if _is_unc(value):
            raise ValueError(_UNC_REFUSED)
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("path", mode="before")
    @classmethod
    def _worker_path(cls, value: object) -> object:
        if isinstance(value, str) and _is_unc(value):
            raise ValueError(_UNC_REFUSED)
        return value

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.match(value):
            raise ValueError("sha256 must be 64 hexadecimal digits")
        return value.lower() if value else value

    @model_validator(mode="after")
    def _one_source_with_hash(self) -> WindowsArtefact:
        if bool(self.url) == bool(self.path):
            raise ValueError("give url or path (a file on the worker host), exactly one")
        if not self.sha256:
            raise ValueError("sha256 is required: the node refuses a file it cannot check")
        return self


def _artefact(value: object) -> object:
    """A bare string is the old form (a path as the node sees it): say what replaced it."""
    if isinstance(value, str):
        if _is_unc(value):
            raise ValueError(_UNC_REFUSED)
        raise ValueError("give {url, sha256} or {path, sha256} (a file on the worker host)")
    return value


class WindowsTools(_Strict):
    """The three programs the job runs on a node, installed into the node's bin folder."""

    openstack_service: WindowsArtefact | None = None  # OpenStackService.exe, the service wrapper
    qemu_img: WindowsArtefact | None = None  # qemu-img.exe (nova's qemu_img_cmd)
    mkisofs: WindowsArtefact | None = None  # mkisofs.exe (nova's mkisofs_cmd, config drives)

    _plain = field_validator("openstack_service", "qemu_img", "mkisofs",
                             mode="before")(_artefact)


class ServiceAccount(_Strict):
    """The domain account nova-compute and the agent run as (not LocalSystem).

    Live and cold migration and resize copy disks to the peer host, which
    LocalSystem has no rights on; the account needs to be an administrator of
    every node. The password is a reference, like every secret.
    """

    username: str  # DOMAIN\\user
    password: Secret

    @field_validator("username")
    @classmethod
    def _domain_user(cls, value: str) -> str:
        if not re.fullmatch(r"[^\\/\s]+\\[^\\/\s]+", value):
            raise ValueError("must be DOMAIN\\user (a domain account: migration needs rights "
                             "on the peer host)")
        return value

    _password_given = field_validator("password")(_check_secret_given)


class WindowsPrerequisites(_Strict):
    """What bootstrap makes sure a Hyper-V node has, and how its services run.

    Installers and tools come from an HTTP(S) URL or from the worker, each
    with its SHA-256; without one, a missing tool is reported instead of
    installed.
    """

    python_installer: WindowsArtefact | None = None  # python.org's installer, run quietly
    git_installer: WindowsArtefact | None = None  # Git for Windows' installer, run silently
    tools: WindowsTools = Field(default_factory=WindowsTools)
    # The network adapter an external vSwitch is created on, when none exists yet.
    vswitch_adapter: str | None = None
    # None: the services run as LocalSystem, and migration between hosts fails.
    service_account: ServiceAccount | None = None
    # Set-VMHost -VirtualMachineMigrationAuthenticationType (Microsoft's accepted values).
    migration_authentication: Literal["Kerberos", "CredSSP"] = "Kerberos"
    # Subnets for Add-VMMigrationNetwork; empty: -UseAnyNetworkForMigration $true.
    migration_networks: list[str] = Field(default_factory=list)
    # nova's [hyperv] limit_cpu_features: hosts with different CPUs can then live-migrate.
    limit_cpu_features: bool = True

    _plain = field_validator("python_installer", "git_installer", mode="before")(_artefact)

    @field_validator("migration_networks")
    @classmethod
    def _subnets(cls, values: list[str]) -> list[str]:
        import ipaddress

        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"not a subnet (address/prefix): {value!r}") from None
        return values

    def artefacts(self) -> dict[str, WindowsArtefact | None]:
        """Every file bootstrap may fetch, by its key."""
        return {
            "python_installer": self.python_installer,
            "git_installer": self.git_installer,
            "openstack_service": self.tools.openstack_service,
            "qemu_img": self.tools.qemu_img,
            "mkisofs": self.tools.mkisofs,
        }


class DevstackHypervJob(_Strict):
    """The mixed Linux devstack controller + Windows Hyper-V compute job."""

    type: Literal["devstack-hyperv"]
    voting: bool = True
    timeout: int = Field(10800, ge=1)
    hyperv_nodes: int = Field(2, ge=1)
    git_base: str = "https://opendev.org"
    stack_timeout: int = Field(3600, ge=1)
    services_timeout: int = Field(600, ge=1)
    command_timeout: int = Field(1800, ge=1)
    compute_driver: str = "compute_hyperv.driver.HyperVDriver"
    vswitch_name: str = "external"
    physical_network: str = "physnet1"
    # The tenant VLANs of a single controller; a controller's own `vlan_range`
    # (NodeConfig) wins, so that two lab sets never share VLANs.
    vlan_range: str = "500:2000"
    # The guest image tempest boots: an http(s) URL or a path on the controller,
    # VHD or VHDX. Required: there is no published Hyper-V cirros to default to,
    # and a job without one could only fail every build.
    image: str
    # networking-hyperv's branch or tag for its devstack plugin (default: the
    # devstack branch, itself the change's branch unless devstack_branch is set).
    networking_hyperv_ref: str | None = None
    devstack_branch: str | None = None
    # Paths on the devstack controller (the simulated lab points them at a sandbox).
    devstack_dir: str = "/opt/stack/devstack"
    tempest_dir: str = "/opt/stack/tempest"
    workspace: str = "/opt/stack/hyperv-ci"
    # Paths on the Windows nodes.
    windows_root: str = "C:\\OpenStack"
    windows: WindowsPrerequisites = Field(default_factory=WindowsPrerequisites)
    admin_password: Secret = Field(default_factory=Secret)
    service_password: Secret = Field(default_factory=Secret)
    tempest: TempestConfig = Field(default_factory=TempestConfig)
    extra_projects: list[str] = Field(
        default_factory=lambda: [
            "openstack/compute-hyperv",
            "openstack/networking-hyperv",
            "openstack/os-win",
        ]
    )

    _validate_vlan = field_validator("vlan_range")(_check_vlan_range)
    _validate_image = field_validator("image")(_check_image)


JobConfig = Annotated[LocalJob | DevstackHypervJob, Field(discriminator="type")]
