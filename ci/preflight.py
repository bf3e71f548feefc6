"""The files a configuration names, checked before a process starts (and by check-config).

Loading a configuration checks its shape only; the keys, known_hosts files,
CA bundles and password files it names are read much later: a missing one
would show as a listener retrying forever at WARNING, or a failed build.
Each process checks what it will need at start and exits 2 naming the key
and the problem; `check-config` checks everything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko

from ci.config import Config, DevstackHypervJob, GerritConfig, Secret


@dataclass(frozen=True)
class FileProblem:
    """One named file that cannot serve: `key` is where the configuration names it."""

    key: str
    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.key}: {self.path}: {self.problem}"


def known_hosts_name(host: str, port: int) -> str:
    """How OpenSSH (and paramiko) name a server in known_hosts: `[host]:port` unless port 22."""
    return host if port == 22 else f"[{host}]:{port}"


def readable(key: str, path: Path) -> FileProblem | None:
    """None if `path` is a file this process may read."""
    if not path.exists():
        return FileProblem(key, path, "no such file")
    if not path.is_file():
        return FileProblem(key, path, "not a file")
    if not os.access(path, os.R_OK):
        return FileProblem(key, path, f"not readable by this user (uid {os.getuid()})")
    return None


def known_host(key: str, path: Path, host: str, port: int) -> FileProblem | None:
    """None if `path` is a readable known_hosts file with a key for host:port."""
    problem = readable(key, path)
    if problem is not None:
        return problem
    name = known_hosts_name(host, port)
    try:
        keys = paramiko.HostKeys(str(path))
    except (OSError, paramiko.SSHException, ValueError) as exc:
        return FileProblem(key, path, f"not a known_hosts file: {exc}")
    if keys.lookup(name) is None:
        return FileProblem(key, path, f"has no key for {name} (ssh-keyscan -p {port} {host} "
                           "prints it: check it against the server's published fingerprint)")
    return None


def gerrit_problems(gerrit: GerritConfig) -> list[FileProblem]:
    """What the listener and the reporter need to reach Gerrit."""
    found = [readable("gerrit.key_file", gerrit.key_file),
             known_host("gerrit.known_hosts", gerrit.known_hosts, gerrit.host, gerrit.port)]
    return [p for p in found if p is not None]


def _secrets(config: Config) -> Iterator[tuple[str, Secret]]:
    for i, node in enumerate(config.nodes):
        if node.winrm is not None:
            yield f"nodes.{i}.winrm.password.password_file", node.winrm.password
        for j, secret in enumerate(node.secrets):
            yield f"nodes.{i}.secrets.{j}.password_file", secret
    for name, job in config.jobs.items():
        if isinstance(job, DevstackHypervJob):
            yield f"jobs.{name}.admin_password.password_file", job.admin_password
            yield f"jobs.{name}.service_password.password_file", job.service_password
            if job.windows.service_account is not None:
                yield (f"jobs.{name}.windows.service_account.password.password_file",
                       job.windows.service_account.password)


def worker_problems(config: Config) -> list[FileProblem]:
    """What a worker needs for its builds: node keys and known_hosts, CA files,
    password files and the tools it uploads."""
    found: list[FileProblem | None] = []
    for i, node in enumerate(config.nodes):
        if node.ssh is not None:
            found.append(readable(f"nodes.{i}.ssh.key_file", node.ssh.key_file))
            found.append(known_host(f"nodes.{i}.ssh.known_hosts", node.ssh.known_hosts,
                                    node.address, node.ssh.port))
        if node.winrm is not None and node.winrm.ca_file is not None:
            found.append(readable(f"nodes.{i}.winrm.ca_file", node.winrm.ca_file))
    found += [readable(key, secret.password_file) for key, secret in _secrets(config)
              if secret.password_file is not None]
    for name, job in config.jobs.items():
        if isinstance(job, DevstackHypervJob):
            found += [readable(f"jobs.{name}.windows.{item}.path", artefact.path)
                      for item, artefact in job.windows.artefacts().items()
                      if artefact is not None and artefact.path is not None]
    return [p for p in found if p is not None]


def database_problems(config: Config) -> list[FileProblem]:
    """The database's password file, when it has one."""
    path = getattr(config.database, "password_file", None)
    problem = readable("database.password_file", path) if path is not None else None
    return [] if problem is None else [problem]


def listener_problems(config: Config) -> list[FileProblem]:
    return database_problems(config) + gerrit_problems(config.gerrit)


def all_problems(config: Config) -> list[FileProblem]:
    """Everything `check-config` checks: every process's files."""
    found = database_problems(config) + gerrit_problems(config.gerrit) + worker_problems(config)
    return list(dict.fromkeys(found))  # a file shared by several keys is named per key
