"""The one YAML configuration file, validated with pydantic on load.

Secrets never live in the YAML: a password is named by the environment
variable that holds it (`password_env`), a key by its file (`key_file`).
`load_config` raises `ConfigError` with one line per problem, naming the key.
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ci.errors import PermanentError


class ConfigError(PermanentError):
    """A configuration file that cannot be used; the message names key and problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _vlan_bounds(value: str) -> tuple[int, int]:
    """`"A:B"` → (A, B); a VLAN ID is 1..4094 (IEEE 802.1Q reserves 0 and 4095)."""
    match = re.fullmatch(r"(\d{1,4}):(\d{1,4})", value)
    if match is None:
        raise ValueError(f"VLAN range {value!r} must look like FIRST:LAST, e.g. 500:599")
    first, last = int(match.group(1)), int(match.group(2))
    if not 1 <= first <= last <= 4094:
        raise ValueError(f"VLAN range {value!r} must lie within 1..4094, first <= last")
    return first, last


def _check_vlan_range(value: str | None) -> str | None:
    if value is not None:
        _vlan_bounds(value)
    return value


# devstack's functions `upload_image` takes *.vhd and *.vhdx as Hyper-V disk
# images; compressed ones are not offered because tempest's scenario tests
# upload [scenario] img_file as it is, and a gzip is no VHD.
_IMAGE_SUFFIXES = (".vhd", ".vhdx")


def _check_image(value: str) -> str:
    if not re.fullmatch(r"(https?://[^\s/,]+/|file:///|/)[^\s,]*", value):
        raise ValueError("must be an http(s):// URL or an absolute path on the controller "
                         "(or file:///path), without spaces or commas (IMAGE_URLS is a list)")
    if not value.lower().endswith(_IMAGE_SUFFIXES):
        raise ValueError("must be a .vhd or .vhdx image: Hyper-V boots only those")
    return value


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from exc
    return value


class Secret(_Strict):
    """A secret given by reference: an environment variable or a file."""

    password_env: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Secret:
        if self.password_env and self.password_file:
            raise ValueError("give password_env or password_file, not both")
        return self

    @property
    def given(self) -> bool:
        """Whether the secret names a source at all."""
        return bool(self.password_env or self.password_file)

    def resolve(self) -> str | None:
        """Read the secret now (never at load time, never into a log)."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(f"environment variable {self.password_env} is not set")
            return value
        if self.password_file:
            return self.password_file.expanduser().read_text(encoding="utf-8").strip()
        return None


class DatabaseConfig(_Strict):
    url: str = "sqlite:///.demo/hyperv-ci.db"
    # The password of a server database, by reference (never in the URL in the YAML):
    # an environment variable, or a file such as a Compose secret in /run/secrets/.
    password_env: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DatabaseConfig:
        if self.password_env and self.password_file:
            raise ValueError("give password_env or password_file, not both")
        return self

    @field_validator("url")
    @classmethod
    def _no_password_in_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(f"not a database URL: {value!r}") from None
        if url.password:
            raise ValueError("the URL holds a password: give it by reference (password_env)")
        return value

    def sqlalchemy_url(self) -> str:
        """The URL with the referenced password filled in."""
        if not (self.password_env or self.password_file):
            return self.url
        from sqlalchemy.engine import make_url

        secret = Secret(password_env=self.password_env, password_file=self.password_file)
        try:
            password = secret.resolve()
        except OSError as exc:  # a secret file the process's user may not read
            raise ConfigError(f"database.password_file: cannot read {self.password_file}: "
                              f"{exc.strerror}") from None
        if not password:
            raise ConfigError("database: the password file or variable is empty")
        return make_url(self.url).set(password=password).render_as_string(hide_password=False)


class GerritConfig(_Strict):
    host: str
    port: int = Field(29418, ge=1, le=65535)
    username: str
    key_file: Path
    known_hosts: Path
    keepalive: int = Field(15, ge=0, description="SSH keepalive interval, seconds")
    # A keepalive's reply later than this ends the event stream (a frozen link
    # TCP never notices): it is then detected within keepalive + keepalive_timeout.
    keepalive_timeout: int = Field(30, ge=1)
    # A stream that stays silent this long is reconnected too (and caught up by
    # query), in case Gerrit's side of it stalled while the link still answers.
    silence_timeout: int = Field(600, ge=0)
    web_url: str = ""
    # Where the job fetches a project's git refs from; {project} is replaced.
    git_url: str = "https://review.opendev.org/{project}"
    ci_name: str = "hyperv-ci"
    recheck_regex: Annotated[str, Field(validate_default=True)] = (
        r"^\s*(recheck|reverify)(\s+hyper-?v)?\s*$"
    )
    label: str = "Verified"
    tag: str = "autogenerated:hyperv-ci"
    ignore_authors: list[str] = Field(default_factory=list)

    _validate_regex = field_validator("recheck_regex")(_check_regex)

    @field_validator("key_file", "known_hosts")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def dead_link_seconds(self) -> int | None:
        """How long a frozen link can go unnoticed at most (None: until Gerrit speaks)."""
        bounds = [self.keepalive + self.keepalive_timeout] if self.keepalive else []
        if self.silence_timeout:
            bounds.append(self.silence_timeout)
        return min(bounds, default=None)


class ProjectConfig(_Strict):
    name: str
    branches: list[str] = Field(default_factory=lambda: [".*"])
    files: list[str] = Field(
        default_factory=list, description="regexes; empty means every change of the project"
    )
    jobs: list[str]

    @field_validator("branches", "files")
    @classmethod
    def _regexes(cls, values: list[str]) -> list[str]:
        return [_check_regex(v) for v in values]


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

    @field_validator("password")
    @classmethod
    def _password_given(cls, value: Secret) -> Secret:
        if not value.given:
            raise ValueError("name the password's source: password_env or password_file")
        return value


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


class SSHAccess(_Strict):
    port: int = Field(22, ge=1, le=65535)
    username: str
    key_file: Path
    known_hosts: Path


class WinRMAccess(_Strict):
    scheme: Literal["http", "https"] = "https"
    port: int | None = Field(None, ge=1, le=65535)
    path: str = "/wsman"
    transport: Literal["basic", "ntlm", "kerberos", "credssp", "plaintext", "ssl"] = "ntlm"
    username: str
    password: Secret
    ca_file: Path | None = None
    # Certificate validation is on unless an operator turns it off for one node.
    verify_certificate: bool = True
    operation_timeout: int = Field(20, ge=1)
    read_timeout: int = Field(30, ge=2)
    # What native tools that ignore the shell's UTF-8 code page write in (the
    # node's OEM code page: cp437 for en-US, cp850 for much of Western Europe).
    oem_codepage: str = "cp437"

    @field_validator("password")
    @classmethod
    def _password_given(cls, value: Secret) -> Secret:
        if not value.given:
            raise ValueError("name the password's source: password_env or password_file")
        return value

    @field_validator("oem_codepage")
    @classmethod
    def _codepage(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown code page {value!r}") from None
        return value

    @model_validator(mode="after")
    def _timeouts(self) -> WinRMAccess:
        if self.read_timeout <= self.operation_timeout:
            raise ValueError("read_timeout must be greater than operation_timeout")
        return self

    @property
    def endpoint_port(self) -> int:
        return self.port or (5986 if self.scheme == "https" else 5985)


class NodeConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    label: Literal["devstack", "hyperv"]
    address: str
    ssh: SSHAccess | None = None
    winrm: WinRMAccess | None = None
    secrets: list[Secret] = Field(default_factory=list)
    # A devstack controller's data network: the NIC that goes into the OVS
    # bridge of the physical network (devstack creates the bridge but adds no
    # port: lib/neutron, OVS_PHYSICAL_BRIDGE), and this lab set's tenant VLANs.
    data_interface: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,15}$")
    vlan_range: str | None = None

    _validate_vlan = field_validator("vlan_range")(_check_vlan_range)

    @model_validator(mode="after")
    def _access(self) -> NodeConfig:
        if self.label == "devstack" and self.ssh is None:
            raise ValueError("a devstack node needs an 'ssh' section")
        if self.label == "hyperv" and self.winrm is None:
            raise ValueError("a hyperv node needs a 'winrm' section")
        if self.label != "devstack" and (self.data_interface or self.vlan_range):
            raise ValueError("data_interface and vlan_range belong to a devstack node")
        return self


class LogsConfig(_Strict):
    dir: Path = Path(".demo/logs")
    url: str = "http://127.0.0.1:8080/logs/"
    retention_days: int = Field(30, ge=1)
    gzip_over_bytes: int = Field(1024 * 1024, ge=1)


class WorkerConfig(_Strict):
    name: str | None = None
    lease_seconds: int = Field(120, ge=5)
    poll_interval: float = Field(1.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    health_interval: int = Field(60, ge=1)
    # The worker's git cache of the projects it prepares changes from.
    git_cache_dir: Path | None = None


class ReporterConfig(_Strict):
    enabled: bool = True
    # A vote must survive a long Gerrit outage (maintenance can take hours), so
    # the outbox retries for a time budget since the report was queued, not a
    # number of attempts; only then is the report marked failed.
    retry_seconds: int = Field(86400, ge=60, description="give up this long after queueing")
    max_backoff_seconds: int = Field(600, ge=1, description="longest wait between attempts")
    # How often each worker's reporter thread looks at the outbox.
    poll_interval: float = Field(2.0, gt=0)
    report_errors: bool = True


class DashboardConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)


class Config(_Strict):
    """The whole file."""

    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    gerrit: GerritConfig
    projects: list[ProjectConfig] = Field(min_length=1)
    jobs: dict[str, JobConfig]
    nodes: list[NodeConfig] = Field(default_factory=list)
    logs: LogsConfig = Field(default_factory=LogsConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    reporter: ReporterConfig = Field(default_factory=ReporterConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)

    @model_validator(mode="after")
    def _references(self) -> Config:
        for index, project in enumerate(self.projects):
            for job in project.jobs:
                if job not in self.jobs:
                    raise ValueError(f"projects.{index}.jobs: unknown job {job!r}")
        names = [n.name for n in self.nodes]
        if len(names) != len(set(names)):
            raise ValueError("nodes: node names must be unique")
        _check_vlan_overlaps(self)
        return self

    def secrets(self) -> list[str]:
        """Every configured secret that resolves now: what log redaction removes."""
        found: list[str] = []
        refs: list[Secret] = []
        for node in self.nodes:
            refs.extend(node.secrets)
            if node.winrm:
                refs.append(node.winrm.password)
        for job in self.jobs.values():
            if isinstance(job, DevstackHypervJob):
                refs.extend([job.admin_password, job.service_password])
                if job.windows.service_account is not None:
                    refs.append(job.windows.service_account.password)
        for ref in refs:
            try:
                value = ref.resolve()
            except (ConfigError, OSError):
                continue
            if value:
                found.append(value)
        return found


def _check_vlan_overlaps(config: Config) -> None:
    """Two controllers (two lab sets) whose tenant VLANs overlap would put
    guests of different builds on one VLAN of the shared physical network."""
    job_ranges = [j.vlan_range for j in config.jobs.values() if isinstance(j, DevstackHypervJob)]
    ranges = [
        (node.name, value, _vlan_bounds(value))
        for node in config.nodes if node.label == "devstack"
        for value in ([node.vlan_range] if node.vlan_range else job_ranges)
    ]
    for index, (name, value, (first, last)) in enumerate(ranges):
        for other, other_value, (o_first, o_last) in ranges[index + 1:]:
            if other != name and first <= o_last and o_first <= last:
                raise ValueError(
                    f"nodes: devstack controllers {name} ({value}) and {other} ({other_value}) "
                    "share VLANs: give each controller its own vlan_range")


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{where}: {err['msg']}")
    return "\n".join(lines)


def parse_config(data: object, *, base_dir: Path | None = None) -> Config:
    """Validate an already-parsed YAML document; relative paths resolve against base_dir."""
    if not isinstance(data, dict):
        raise ConfigError("(top level): the file must hold a mapping")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None
    if base_dir is not None:
        config = _resolve_paths(config, base_dir)
    return config


def load_config(path: Path | str) -> Config:
    """Read and validate the YAML file at `path`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, base_dir=path.parent)


def _resolve_windows(windows: WindowsPrerequisites,
                     fix: Callable[[Path | None], Path | None]) -> WindowsPrerequisites:
    """Worker-side artefact paths and the service account's password file, made absolute."""

    def art(item: WindowsArtefact | None) -> WindowsArtefact | None:
        return item.model_copy(update={"path": fix(item.path)}) if item else None

    account = windows.service_account
    if account is not None:
        secret = account.password
        account = account.model_copy(update={
            "password": secret.model_copy(update={"password_file": fix(secret.password_file)})})
    tools = windows.tools.model_copy(update={
        "openstack_service": art(windows.tools.openstack_service),
        "qemu_img": art(windows.tools.qemu_img), "mkisofs": art(windows.tools.mkisofs)})
    return windows.model_copy(update={
        "python_installer": art(windows.python_installer),
        "git_installer": art(windows.git_installer), "tools": tools,
        "service_account": account})


def _resolve_paths(config: Config, base_dir: Path) -> Config:
    """Relative file paths in the YAML are relative to the file, not to the cwd."""

    def fix(p: Path | None) -> Path | None:
        if p is None or p.is_absolute():
            return p
        return (base_dir / p).resolve()

    def fix_secret(secret: Secret) -> Secret:
        return secret.model_copy(update={"password_file": fix(secret.password_file)})

    gerrit = config.gerrit.model_copy(update={
        "key_file": fix(config.gerrit.key_file), "known_hosts": fix(config.gerrit.known_hosts),
    })
    nodes = []
    for node in config.nodes:
        update: dict[str, object] = {}
        if node.ssh:
            update["ssh"] = node.ssh.model_copy(update={
                "key_file": fix(node.ssh.key_file), "known_hosts": fix(node.ssh.known_hosts),
            })
        if node.winrm:
            update["winrm"] = node.winrm.model_copy(update={
                "ca_file": fix(node.winrm.ca_file), "password": fix_secret(node.winrm.password)})
        update["secrets"] = [fix_secret(secret) for secret in node.secrets]
        nodes.append(node.model_copy(update=update))
    jobs: dict[str, JobConfig] = {}
    for name, job in config.jobs.items():
        if isinstance(job, DevstackHypervJob):
            job = job.model_copy(update={"admin_password": fix_secret(job.admin_password),
                                         "service_password": fix_secret(job.service_password),
                                         "windows": _resolve_windows(job.windows, fix)})
        jobs[name] = job
    logs = config.logs.model_copy(update={"dir": fix(config.logs.dir)})
    worker = config.worker.model_copy(update={"git_cache_dir": fix(config.worker.git_cache_dir)})
    db = config.database.model_copy(update={"password_file": fix(config.database.password_file)})
    if db.url.startswith("sqlite:///") and not db.url.startswith("sqlite:////"):
        rel = db.url.removeprefix("sqlite:///")
        if rel and rel != ":memory:":
            db = db.model_copy(update={"url": f"sqlite:///{fix(Path(rel))}"})
    return config.model_copy(
        update={"gerrit": gerrit, "nodes": nodes, "logs": logs, "database": db, "worker": worker,
                "jobs": jobs}
    )
