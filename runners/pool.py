"""The runners' side of the node pool: which nodes a build's job needs.

The node state machine itself (reserve, release, health, recovery, enable)
is core: ci/nodes.py and ci/node_recovery.py, beside the build transitions of ci/queue.py. This
module adapts it to the job types, which live in runners (`PoolReserver`),
and re-exports its names for the callers that still import them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from ci.config import Config
from ci.models import Build
from ci.node_recovery import (
    RECOVERY_STALE,
    NodeBusy,
    Probe,
    RecoveryTask,
    Verdict,
    claim_for_enable,
    claim_recovery,
    enable,
    finish_recovery,
    recovery_verdict,
)
from ci.nodes import (
    OFFLINE_AFTER,
    mark_offline,
    nodes_of,
    record_health,
    release,
    reserve,
    set_drained,
    sync_nodes,
)

__all__ = [
    "OFFLINE_AFTER", "RECOVERY_STALE", "NodeBusy", "PoolReserver", "Probe", "RecoveryTask",
    "Verdict", "claim_for_enable", "claim_recovery", "enable", "finish_recovery", "mark_offline",
    "nodes_of", "record_health", "recovery_verdict", "release", "reserve", "set_drained",
    "sync_nodes",
]


@dataclass
class PoolReserver:
    """Adapter for `ci.queue.claim_next`: reserves the nodes a build's job needs."""

    config: Config

    def __call__(self, session: Session, build: Build) -> bool:
        from runners.registry import node_labels_for  # the job types live in runners

        labels = node_labels_for(self.config, build.job)
        if not labels:
            return True
        return reserve(session, build.id, labels,
                       by_lab_set=bool(self.config.lab_sets)) is not None
