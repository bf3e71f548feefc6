"""Rendering the `devstack-hyperv` job's files from the Jinja2 templates.

One devstack controller and `job.hyperv_nodes` Hyper-V nodes each get their
scripts and configs, named `{node}-{step}.{ext}` (`devstack-1-local.conf`,
`hv-1-teardown.ps1`). Gerrit text reaches a script only through the `sh` and
`ps` filters; config values go through the `ini` filter, which refuses
anything that could break out of its line and escapes oslo.config's `$`.
The values the templates are given (compute driver, tempest lists, projects)
come from runners/job_values.py; this module owns the files, their paths on each node
and the `hyperv-ci render` preview.

Secrets (`job_values.SECRET_KEYS`) are passed in at run time; without them the
files carry obvious placeholders, so `hyperv-ci render` never writes a password.
"""

from __future__ import annotations

import functools
import logging
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal
from urllib.parse import quote

import jinja2

from ci.changes import ChangeInfo
from ci.config import Config, DevstackHypervJob, NodeConfig
from runners.job_values import (
    DEVSTACK_PROJECTS,
    RenderError,
    checked_secrets,
    compute_driver_for,
    controller_network,
    devstack_plugins,
    image_settings,
    tempest_exclude_file,
    tempest_parallel_exclude_file,
    tempest_serial_regex,
    windows_projects,
)
from runners.powershell import ps_quote
from runners.windows_values import TOOLS, node_artefacts, service_account_password

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).with_name("templates")

LINUX_TEMPLATES = (
    "local.conf",
    "prepare-checkout.sh",
    "stack.sh",
    "check-services.sh",
    "tempest.sh",
    "collect-logs.sh",
    "cleanup.sh",
)
WINDOWS_TEMPLATES = (
    "teardown.ps1",
    "bootstrap.ps1",
    "install.ps1",
    "nova.conf",
    "neutron_hyperv_agent.conf",
    "configure-services.ps1",
    "start-services.ps1",
    "stop-services.ps1",
    "service-stderr.ps1",
    "collect-logs.ps1",
    "cleanup.ps1",
)

_PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
_REVISION_RE = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})$")
_HOST_RE = re.compile(r"^[A-Za-z0-9._:-]+$")

FileKind = Literal["script", "config", "data"]


@dataclass(frozen=True)
class RenderedFile:
    name: str
    node: str
    step: str
    text: str
    remote_path: str
    kind: FileKind

    def payload(self) -> bytes:
        """The bytes to upload: `.ps1` files get a UTF-8 BOM, which Windows
        PowerShell 5.1 needs to read a non-ASCII script as UTF-8 (without it
        the file is read in the ANSI code page)."""
        encoding = "utf-8-sig" if self.name.endswith(".ps1") else "utf-8"
        return self.text.encode(encoding)


class RenderedJob(Mapping[str, str]):
    """File name → text, plus where each file goes on its node."""

    def __init__(self, files: Sequence[RenderedFile], paths: Mapping[str, Mapping[str, str]]):
        self.files = {f.name: f for f in files}
        self._paths = paths

    def __getitem__(self, name: str) -> str:
        return self.files[name].text

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def file_for(self, node_name: str, step: str) -> RenderedFile:
        """The file of `step` for a node; `step` may carry its extension
        (`nova.conf`, `teardown.ps1`) or not (`teardown`, `local`)."""
        exact = self.files.get(f"{node_name}-{step}")
        if exact is not None:
            return exact
        found = [
            f for f in self.files.values()
            if f.node == node_name and f.step.rsplit(".", 1)[0] == step
        ]
        if len(found) != 1:
            raise KeyError(f"{node_name}: no single file for step {step!r}")
        return found[0]

    def for_node(self, node_name: str, step: str) -> str:
        """The text of `step`'s file for a node (see `file_for`)."""
        return self.file_for(node_name, step).text

    def node_files(self, node_name: str) -> list[RenderedFile]:
        """Every file a node receives, in upload order."""
        return [f for f in self.files.values() if f.node == node_name]

    def path(self, node_name: str, what: str) -> str:
        """A well-known path on a node: `staging` (where files are uploaded),
        `bundle` (where the worker puts the change's git bundle), `logs`
        (the archive collect-logs leaves), `subunit` (devstack node only)."""
        return self._paths[node_name][what]


# ---------------------------------------------------------------- filters


def _sh(value: object) -> str:
    return shlex.quote(str(value))


def _ini(value: object) -> str:
    """A config value that cannot break out of its line or be unquoted, with
    `$` escaped as `$$` (oslo.config would read `$name` as another option)."""
    text = str(value)
    if any(c in text for c in "\r\n\x00") or text != text.strip():
        raise RenderError(f"value {text!r} cannot go into a config file")
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        raise RenderError(f"value {text!r} would lose its quotes in a config file")
    return text.replace("$", "$$")


@functools.cache
def make_environment() -> jinja2.Environment:
    """The job's Jinja2 environment: StrictUndefined, filters `ps`, `sh`, `ini`.

    One per process, shared (rendering is thread-safe): it keeps the compiled
    templates, which a new environment compiled again at every render (~30 ms
    for the job's files, twice a build, plus each provisioning script).
    """
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - shell/PowerShell/ini, quoted by filters
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ps"] = ps_quote
    env.filters["sh"] = _sh
    env.filters["ini"] = _ini
    return env


# ---------------------------------------------------------------- helpers


def _check_change(change: ChangeInfo) -> None:
    if not _PROJECT_RE.match(change.project) or ".." in change.project:
        raise RenderError(f"project name {change.project!r} is not usable as a path")
    if not _REVISION_RE.match(change.revision):
        raise RenderError(f"revision {change.revision!r} is not a git object name")
    if not change.branch_tip and (int(change.number) < 1 or int(change.patchset) < 1):
        raise RenderError("change number and patchset must be positive")


def _host(address: str) -> str:
    if not _HOST_RE.match(address):
        raise RenderError(f"node address {address!r} is not a host name or IP address")
    return f"[{address}]" if ":" in address else address


def _pick_nodes(
    job: DevstackHypervJob, nodes: Sequence[NodeConfig]
) -> tuple[NodeConfig, list[NodeConfig]]:
    devstack = [n for n in nodes if n.label == "devstack"]
    hyperv = [n for n in nodes if n.label == "hyperv"]
    if len(devstack) != 1 or len(hyperv) != job.hyperv_nodes:
        raise RenderError(
            f"the job needs 1 devstack and {job.hyperv_nodes} hyperv nodes, "
            f"got {len(devstack)} and {len(hyperv)}"
        )
    return devstack[0], hyperv


# ---------------------------------------------------------------- rendering


def render_job(
    config: Config,
    job_name: str,
    change: ChangeInfo,
    nodes: Sequence[NodeConfig],
    secrets: Mapping[str, str] | None = None,
    build_id: int = 0,
) -> RenderedJob:
    """Render every file the job sends to its nodes.

    `secrets` maps each of `job_values.SECRET_KEYS` to its value (see
    `job_values.job_secrets`); None renders placeholders. Raises RenderError
    for unusable inputs.
    """
    job = config.jobs.get(job_name)
    if not isinstance(job, DevstackHypervJob):
        raise RenderError(f"{job_name!r} is not a devstack-hyperv job")
    _check_change(change)
    controller, hyperv = _pick_nodes(job, nodes)
    values = checked_secrets(secrets)
    dest = PurePosixPath(job.devstack_dir).parent
    workspace = PurePosixPath(job.workspace)
    staging_win = PureWindowsPath(job.windows_root, "hyperv-ci")
    controller_host = _host(controller.address)
    root = PureWindowsPath(job.windows_root)
    rabbit = quote(values["rabbit_password"], safe="")
    project_dir = change.project.rsplit("/", 1)[-1]
    context = {
        "job": job,
        "job_name": job_name,
        "build_id": int(build_id),
        "change": change,
        "number": int(change.number),
        "patchset": int(change.patchset),
        "local_branch": f"hyperv-ci-{int(change.number)}-{int(change.patchset)}",
        "project_var": DEVSTACK_PROJECTS.get(change.project),
        "project_dir": project_dir,
        "dest": str(dest),
        "workspace": str(workspace),
        "controller": controller,
        "controller_host": controller_host,
        "hyperv_nodes": hyperv,
        "secrets": values,
        "transport_url": f"rabbit://stackrabbit:{rabbit}@{controller_host}:5672/",
        "keystone_url": f"http://{controller_host}/identity",
        "win": {
            "instances": str(root / "Instances"),
            "logs": str(root / "logs"),
            "locks": str(root / "locks"),
            "mkisofs": str(root / "bin" / "mkisofs.exe"),
            "qemu_img": str(root / "bin" / "qemu-img.exe"),
        },
        "artefacts": node_artefacts(job),
        "tools": TOOLS,
        "service_account_password": service_account_password(job, real=secrets is not None),
        "compute_driver": compute_driver_for(job, change),
        "windows_projects": windows_projects(job, change),
        "devstack_branch": job.devstack_branch or change.branch,
        "devstack_plugins": devstack_plugins(
            job, change, str(dest), f"hyperv-ci-{int(change.number)}-{int(change.patchset)}",
            job.devstack_branch or change.branch),
        "mechanism_drivers": "openvswitch,hyperv",
        "image": image_settings(job),
        "vlan_range": controller_network(job, controller)[0],
        "data_interface": controller_network(job, controller)[1],
        "ovs_bridge": f"br-{job.physical_network}",
        "tempest_serial_regex": tempest_serial_regex(job),
        "ci_name": config.gerrit.ci_name,
    }
    env = make_environment()
    files: list[RenderedFile] = []
    paths: dict[str, dict[str, str]] = {}

    def add(node: str, step: str, text: str, remote: str, kind: FileKind) -> None:
        files.append(RenderedFile(f"{node}-{step}", node, step, text, remote, kind))

    linux = {"node": controller, **context}
    for name in LINUX_TEMPLATES:
        text = env.get_template(f"{name}.j2").render(linux)
        kind: FileKind = "config" if name.endswith(".conf") else "script"
        add(controller.name, name, text, str(workspace / name), kind)
    data = {
        "hyperv-hosts.txt": "".join(f"{n.name}\n" for n in hyperv),
        "tempest-exclude.txt": tempest_exclude_file(job),
        "tempest-exclude-parallel.txt": tempest_parallel_exclude_file(job),
    }
    for name, text in data.items():
        add(controller.name, name, text, str(workspace / name), "data")
    paths[controller.name] = {
        "staging": str(workspace),
        "bundle": str(workspace / "change.bundle"),
        "logs": str(workspace / "logs.tar.gz"),
        "subunit": str(workspace / "tempest" / "tempest.subunit"),
    }
    for node in hyperv:
        windows = {"node": node, **context}
        for name in WINDOWS_TEMPLATES:
            text = env.get_template(f"{name}.j2").render(windows)
            kind = "config" if name.endswith(".conf") else "script"
            add(node.name, name, text, str(staging_win / name), kind)
        paths[node.name] = {
            "staging": str(staging_win),
            "bundle": str(staging_win / "change.bundle"),
            "logs": str(staging_win / "logs.zip"),
        }
    logger.debug("rendered %d files for build %s", len(files), build_id)
    return RenderedJob(files, paths)


def write_rendered(rendered: RenderedJob, out_dir: Path) -> list[Path]:
    """Write every file under `out_dir` (the bytes `payload()` would upload)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for item in rendered.files.values():
        path = out_dir / item.name
        path.write_bytes(item.payload())
        written.append(path)
    return written


# ---------------------------------------------------------------- CLI helper

EXAMPLE_SUBJECT = "EXAMPLE change (not read from Gerrit): render preview"
EXAMPLE_BRANCH = "unmaintained/2023.1"


def example_change(config: Config, number: int, patchset: int) -> ChangeInfo:
    """A clearly-marked stand-in for a change the CI has not seen."""
    project = config.projects[0].name
    return ChangeInfo(
        project=project,
        # The newest branch where nova's in-tree Hyper-V driver and
        # networking-hyperv's devstack plugin both live (docs/devstack.md).
        branch=EXAMPLE_BRANCH,
        number=number,
        patchset=patchset,
        ref=f"refs/changes/{number % 100:02d}/{number}/{patchset}",
        revision="0" * 40,
        subject=EXAMPLE_SUBJECT,
        owner_name="Example Owner <example@example.invalid>",
        url="",
    )


def _example_nodes(job: DevstackHypervJob, config: Config) -> list[NodeConfig]:
    devstack = [n for n in config.nodes if n.label == "devstack"][:1]
    hyperv = [n for n in config.nodes if n.label == "hyperv"][: job.hyperv_nodes]
    if not devstack:
        # Documentation-range addresses: obviously not a real lab.
        devstack = [NodeConfig.model_construct(name="devstack-1", label="devstack",
                                               address="192.0.2.10")]
    for index in range(len(hyperv), job.hyperv_nodes):
        hyperv.append(NodeConfig.model_construct(name=f"hv-{index + 1}", label="hyperv",
                                                 address=f"192.0.2.{21 + index}"))
    return [*devstack, *hyperv]


def parse_change_spec(spec: str) -> tuple[int, int]:
    """`"N,P"` → (N, P)."""
    match = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*", spec)
    if match is None:
        raise RenderError(f"--change must look like NUMBER,PATCHSET, not {spec!r}")
    return int(match.group(1)), int(match.group(2))


def render_command(
    config: Config,
    job_name: str,
    change_spec: str,
    out_dir: Path,
    change: ChangeInfo | None = None,
) -> list[Path]:
    """`hyperv-ci render JOB --change N,P --out DIR`: write the job's files with
    placeholder secrets. `change` is the real one when the caller knows it."""
    number, patchset = parse_change_spec(change_spec)
    if change is None:
        change = example_change(config, number, patchset)
    job = config.jobs.get(job_name)
    if not isinstance(job, DevstackHypervJob):
        raise RenderError(f"{job_name!r} is not a devstack-hyperv job")
    rendered = render_job(config, job_name, change, _example_nodes(job, config))
    return write_rendered(rendered, out_dir)
