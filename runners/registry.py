"""Job types by name: which Runner runs a configured job and which nodes it needs."""

from __future__ import annotations

from typing import Any

from ci.config import Config, DevstackHypervJob, LocalJob
from runners.base import Runner


def make_runner(config: Config, job_name: str) -> Runner[Any]:
    """A fresh runner (one per build) for the configured job."""
    job = config.jobs[job_name]
    if isinstance(job, LocalJob):
        from runners.local import LocalRunner

        return LocalRunner(job)
    if isinstance(job, DevstackHypervJob):
        from runners.devstack_hyperv import DevstackHypervRunner

        return DevstackHypervRunner(job, cache_dir=config.worker.git_cache_dir)
    raise ValueError(f"job {job_name!r} has an unknown type")


def node_labels_for(config: Config, job_name: str) -> list[str]:
    """The node labels a job reserves, one entry per node."""
    job = config.jobs.get(job_name)
    if isinstance(job, DevstackHypervJob):
        return ["devstack"] + ["hyperv"] * job.hyperv_nodes
    return []
