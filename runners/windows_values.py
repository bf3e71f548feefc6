"""What a Hyper-V node's scripts are rendered with from the job's `windows:` section.

The files bootstrap fetches (installers and the three tools, each from an
HTTP(S) URL or uploaded from the worker, each with its SHA-256), where an
uploaded file lands on the node, and the service account's password (a
placeholder in a preview). Pure functions except `read_checked`, which reads
a worker-side file for upload.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

from ci.config import ConfigError, DevstackHypervJob
from ci.errors import PermanentError
from runners.job_values import RenderError

# (config key, the scripts' variable prefix, file name on the node).
ARTEFACTS = (
    ("python_installer", "PythonInstaller", "python-installer.exe"),
    ("git_installer", "GitInstaller", "git-installer.exe"),
    ("openstack_service", "OpenStackService", "OpenStackService.exe"),
    ("qemu_img", "QemuImg", "qemu-img.exe"),
    ("mkisofs", "Mkisofs", "mkisofs.exe"),
)
TOOLS = ("openstack_service", "qemu_img", "mkisofs")
ACCOUNT_PASSWORD_PLACEHOLDER = "PLACEHOLDER-service-account-password"  # noqa: S105 - a stand-in


class ArtefactError(PermanentError):
    """A worker-side artefact that is missing or does not match its SHA-256."""


@dataclass(frozen=True)
class NodeArtefact:
    """One file bootstrap may need; `url` and `upload_path` are '' when not used."""

    key: str
    var: str
    file_name: str
    url: str
    sha256: str
    local_path: Path | None
    upload_path: str

    @property
    def configured(self) -> bool:
        return bool(self.sha256)


def node_artefacts(job: DevstackHypervJob) -> list[NodeArtefact]:
    """Every artefact in script order, configured or not."""
    configured = job.windows.artefacts()
    staging = PureWindowsPath(job.windows_root, "hyperv-ci", "artefacts")
    found = []
    for key, var, file_name in ARTEFACTS:
        item = configured[key]
        found.append(NodeArtefact(
            key=key, var=var, file_name=file_name,
            url=(item.url or "") if item else "",
            sha256=(item.sha256 or "") if item else "",
            local_path=item.path if item else None,
            upload_path=str(staging / file_name) if item and item.path else "",
        ))
    return found


def worker_uploads(job: DevstackHypervJob) -> list[NodeArtefact]:
    """The artefacts the worker uploads to every node before bootstrap."""
    return [a for a in node_artefacts(job) if a.local_path is not None]


def read_checked(artefact: NodeArtefact) -> bytes:
    """The worker-side file's bytes, refused unless they match the configured SHA-256."""
    assert artefact.local_path is not None
    try:
        data = artefact.local_path.read_bytes()
    except OSError as exc:
        raise ArtefactError(f"windows.{artefact.key}: cannot read {artefact.local_path}: "
                            f"{exc.strerror}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != artefact.sha256:
        raise ArtefactError(f"windows.{artefact.key}: {artefact.local_path} has SHA-256 "
                            f"{actual}, not the configured {artefact.sha256}")
    return data


def service_account_password(job: DevstackHypervJob, *, real: bool) -> str:
    """The account's password for configure-services ('' without an account).

    A preview (`real=False`) gets a placeholder, so no password is ever
    written by `hyperv-ci render`.
    """
    account = job.windows.service_account
    if account is None:
        return ""
    if not real:
        return ACCOUNT_PASSWORD_PLACEHOLDER
    try:
        value = account.password.resolve()
    except (ConfigError, OSError) as exc:
        raise RenderError(f"windows.service_account.password: {exc}") from None
    if not value:
        raise RenderError("windows.service_account.password is empty")
    if any(c in value for c in "\r\n\x00"):
        raise RenderError("windows.service_account.password holds a line break")
    return value
