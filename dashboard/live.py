"""What the status page says about time: a running build's ETA, a queued build's wait.

Pure functions over plain records (the caller reads the rows): they mirror
how a worker picks its next build, so "why does it wait" is answered by the
same rules the claim follows: `ci.queue.claim_next` looks at the oldest
`CLAIM_SCAN` queued builds in order and takes the first whose nodes
`ci.nodes.reserve` can have, one free node per label the job needs, all from
one lab set when lab sets are configured; a node is free when it is ready,
not drained and holds no build.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from ci.models import NodeState

CLAIM_SCAN = 20  # ci.queue.claim_next's default `scan`
ETA_SAMPLE = 20  # a job's newest finished builds its ETA is the median of


@dataclass(frozen=True)
class PoolNode:
    """One node as the wait computation sees it."""

    name: str
    label: str
    state: str
    drained: bool = False
    build_id: int | None = None
    lab_set: str | None = None
    offline_cause: str | None = None

    @property
    def free(self) -> bool:
        return self.state == NodeState.READY and not self.drained and self.build_id is None


@dataclass(frozen=True)
class QueuedBuild:
    """A queued build, oldest first, with the node labels its job reserves."""

    build_id: int
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Wait:
    """Where a queued build stands: 1 is the next one a worker looks at."""

    position: int
    reason: str
    can_start: bool  # its nodes are free now: only a worker is missing


@dataclass(frozen=True)
class Eta:
    """A running build against the median of its job's recent builds."""

    expected: float  # seconds a build of this job takes (the median)
    remaining: float  # seconds left; negative when it is over the median

    def text(self) -> str:
        if self.remaining >= 0:
            return f"about {_minutes(self.remaining)} left"
        return f"{_minutes(-self.remaining)} over the usual {_minutes(self.expected)}"


def _minutes(seconds: float) -> str:
    minutes = round(seconds / 60)
    return "under a minute" if minutes < 1 else f"{minutes} min"


def median_duration(durations: Iterable[float]) -> float | None:
    """The median of the durations, or None without any."""
    values = [d for d in durations if d >= 0]
    return statistics.median(values) if values else None


def eta(started: datetime | None, expected: float | None, now: datetime) -> Eta | None:
    """How long a build started at `started` has left, if its job has a history."""
    if started is None or expected is None:
        return None
    return Eta(expected, expected - (now - started).total_seconds())


def queue_waits(queued: Sequence[QueuedBuild], nodes: Sequence[PoolNode],
                by_lab_set: bool = False) -> dict[int, Wait]:
    """Each queued build's position and why it waits, by build id."""
    free = {n.name for n in nodes if n.free}
    # A lab set serves one build at a time: one held node makes the whole set busy.
    busy_sets: set[str] = {n.lab_set for n in nodes
                           if n.lab_set is not None and n.build_id is not None}
    waits: dict[int, Wait] = {}
    for index, build in enumerate(queued):
        position = index + 1
        if index >= CLAIM_SCAN:
            waits[build.build_id] = Wait(position, f"behind the {CLAIM_SCAN} oldest queued "
                                         "builds, which the workers look at first", False)
            continue
        wanted = Counter(build.labels)
        if not wanted:
            waits[build.build_id] = Wait(position, "needs no node: waits for a free worker",
                                         True)
            continue
        if by_lab_set:
            taken, reason = _from_a_lab_set(wanted, nodes, free, busy_sets)
        else:
            taken, reason = _from_the_pool(wanted, nodes, free)
        if taken is None:
            waits[build.build_id] = Wait(position, reason, False)
            continue
        free -= taken
        busy_sets |= {n.lab_set for n in nodes if n.name in taken and n.lab_set is not None}
        waits[build.build_id] = Wait(position, "its nodes are free: waits for a free worker",
                                     True)
    return waits


def _pick(wanted: Counter[str], candidates: Sequence[PoolNode],
          free: set[str]) -> set[str] | None:
    taken: set[str] = set()
    for label, count in wanted.items():
        names = sorted(n.name for n in candidates if n.label == label and n.name in free)
        if len(names) < count:
            return None
        taken.update(names[:count])
    return taken


def _from_the_pool(wanted: Counter[str], nodes: Sequence[PoolNode],
                   free: set[str]) -> tuple[set[str] | None, str]:
    taken = _pick(wanted, nodes, free)
    if taken is not None:
        return taken, ""
    for label, count in wanted.items():
        have = [n for n in nodes if n.label == label]
        if sum(1 for n in have if n.name in free) < count:
            return None, _shortage(label, count, have, free)
    raise AssertionError("a pick failed with every label satisfied")


def _shortage(label: str, count: int, have: Sequence[PoolNode], free: set[str]) -> str:
    """`no free hyperv node (needs 2): hv-1 busy (build #7), hv-2 offline (health-check)`."""
    if len(have) < count:
        return (f"the pool has {len(have)} {label} node{'s' * (len(have) != 1)}; "
                f"the job needs {count}")
    return f"no free {label} node (needs {count}): " + ", ".join(
        _node_state(n, free) for n in sorted(have, key=lambda n: n.name))


def _node_state(node: PoolNode, free: set[str]) -> str:
    if node.state == NodeState.OFFLINE:
        cause = f" ({node.offline_cause})" if node.offline_cause else ""
        return f"{node.name} offline{cause}" + (", drained" if node.drained else "")
    if node.drained:
        return f"{node.name} drained"
    if node.build_id is not None:
        return f"{node.name} busy (build #{node.build_id})"
    if node.free and node.name not in free:
        return f"{node.name} promised to an older queued build"
    return f"{node.name} {node.state}"


def _from_a_lab_set(wanted: Counter[str], nodes: Sequence[PoolNode], free: set[str],
                    busy_sets: set[str]) -> tuple[set[str] | None, str]:
    sets = sorted({n.lab_set for n in nodes if n.lab_set})
    why: list[str] = []
    for name in sets:
        members = [n for n in nodes if n.lab_set == name]
        if name in busy_sets:
            held = sorted({n.build_id for n in members if n.build_id is not None})
            why.append(f"{name} busy" + (f" (build #{held[0]})" if held else
                                         " (promised to an older queued build)"))
            continue
        taken = _pick(wanted, members, free)
        if taken is not None:
            return taken, ""
        lacking = [n for n in members if n.name not in free and n.label in wanted]
        short = [label for label, count in wanted.items()
                 if sum(1 for n in members if n.label == label) < count]
        detail = ", ".join(_node_state(n, free) for n in sorted(lacking, key=lambda n: n.name))
        if short and not detail:
            detail = "lacks a " + " and a ".join(short) + " node"
        why.append(f"{name}: {detail}")
    if not sets:
        return None, "no lab set is configured with the nodes this job needs"
    return None, "no free lab set: " + "; ".join(why)
