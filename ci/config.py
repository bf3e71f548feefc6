"""The one YAML configuration file, validated with pydantic on load.

Secrets never live in the YAML: a password is named by the environment
variable that holds it (`password_env`), a key by its file (`key_file`).
`load_config` raises `ConfigError` with one line per problem, naming the key.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from ci.config_base import (
    ConfigError,
    Secret,
    _check_one_source,
    _check_regex,
    _Strict,
    _vlan_bounds,
)
from ci.config_dashboard import DashboardAuthConfig
from ci.config_gerrit import GerritConfig, GerritRestConfig  # noqa: F401 - re-exported
from ci.config_jobs import (  # noqa: F401 - re-exported
    DevstackHypervJob,
    JobConfig,
    LocalJob,
    ServiceAccount,
    TempestConfig,
    WindowsArtefact,
    WindowsPrerequisites,
    WindowsTools,
)
from ci.config_nodes import (  # noqa: F401 - re-exported
    LabSetConfig,
    NodeConfig,
    ParentHostConfig,
    SSHAccess,
    WinRMAccess,
    check_lab,
)
from ci.config_verdict import (  # noqa: F401 - re-exported
    BaselineBranch,
    BaselinesConfig,
    VerdictConfig,
    check_baselines,
    load_verdict_signatures,
)


class DatabaseConfig(_Strict):
    url: str = "sqlite:///.demo/hyperv-ci.db"
    # The password of a server database, by reference (never in the URL in the YAML):
    # an environment variable, or a file such as a Compose secret in /run/secrets/.
    password_env: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DatabaseConfig:
        _check_one_source(self.password_env, self.password_file)
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
    # Login and actions (docs/dashboard.md): reading is public unless this is false.
    public_read: bool = True
    # Signs the session cookies; made once (0600) and kept, so a restart does not
    # log everyone out. None: $XDG_STATE_HOME/hyperv-ci/dashboard-secret-key.
    secret_key_file: Path | None = None
    cookie_secure: bool | None = None  # None: Secure when the request is https
    auth: DashboardAuthConfig = Field(default_factory=DashboardAuthConfig)


class Config(_Strict):
    """The whole file."""

    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    gerrit: GerritConfig
    projects: list[ProjectConfig] = Field(min_length=1)
    jobs: dict[str, JobConfig]
    nodes: list[NodeConfig] = Field(default_factory=list)
    # Hyper-V hosts carrying the VMs of `provision: checkpoint` nodes.
    parent_hosts: list[ParentHostConfig] = Field(default_factory=list)
    # When given, the pool hands each build a whole set (docs/nodes.md).
    lab_sets: list[LabSetConfig] = Field(default_factory=list)
    logs: LogsConfig = Field(default_factory=LogsConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    reporter: ReporterConfig = Field(default_factory=ReporterConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)
    verdict: VerdictConfig = Field(default_factory=VerdictConfig)

    @model_validator(mode="after")
    def _references(self) -> Config:
        for index, project in enumerate(self.projects):
            for job in project.jobs:
                if job not in self.jobs:
                    raise ValueError(f"projects.{index}.jobs: unknown job {job!r}")
        names = [n.name for n in self.nodes]
        if len(names) != len(set(names)):
            raise ValueError("nodes: node names must be unique")
        check_lab(self.nodes, self.parent_hosts, self.lab_sets)
        _check_vlan_overlaps(self)
        check_baselines(self.baselines, self.projects, self.jobs)
        return self

    def secrets(self) -> list[str]:
        """Every configured secret that resolves now: what log redaction removes."""
        found: list[str] = []
        refs: list[Secret] = []
        if self.gerrit.rest is not None:
            refs.append(self.gerrit.rest.password)
        for node in self.nodes:
            refs.extend(node.secrets)
            if node.winrm:
                refs.append(node.winrm.password)
        refs.extend(parent.winrm.password for parent in self.parent_hosts)
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
    # Known-failure signatures are read with the configuration: a bad one stops the load.
    verdict = load_verdict_signatures(config.verdict, base_dir)
    return config.model_copy(update={"verdict": verdict})


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

    rest = config.gerrit.rest
    if rest is not None:
        rest = rest.model_copy(update={"ca_file": fix(rest.ca_file),
                                       "password": fix_secret(rest.password)})
    gerrit = config.gerrit.model_copy(update={
        "key_file": fix(config.gerrit.key_file), "known_hosts": fix(config.gerrit.known_hosts),
        "rest": rest,
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
    parents = [parent.model_copy(update={"winrm": parent.winrm.model_copy(update={
        "ca_file": fix(parent.winrm.ca_file), "password": fix_secret(parent.winrm.password)})})
        for parent in config.parent_hosts]
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
        update={"gerrit": gerrit, "nodes": nodes, "parent_hosts": parents, "logs": logs,
                "database": db, "worker": worker, "jobs": jobs}
    )
