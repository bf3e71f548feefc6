"""The runner interface every job type implements, and the executors' shared types.

A worker drives a runner through prepare → run → collect → cleanup: `prepare`
returns one value (its nodes, connections, rendered files) that the other
three take; collect and cleanup run whatever `run` did (from `finally`).
Checkpoint nodes are provisioned by the worker, before `prepare` or, for a
runner that waits for them itself (`waits_for_nodes`), while it runs.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Generic, Protocol, TypeVar

from ci.changes import ChangeInfo
from ci.errors import ControlFlow, TransientError

if TYPE_CHECKING:
    from ci.config import Config, NodeConfig
    from runners.steps import StepRecorder

# Receives decoded text as it arrives from a running command (the live view).
OutputSink = Callable[[str], None]


class ExecutorError(TransientError):
    """The transport to a node failed (unreachable, dropped, auth): the CI's fault."""


class CommandStopped(ControlFlow):
    """The executor stopped a running command on the node (it no longer runs there).

    Not an ExecutorError: the transport worked, so the node is not to be
    marked unreachable, and an idempotent step is not retried for it.
    """


class CommandTimeout(CommandStopped):
    """A command outlived its timeout; the executor has stopped it on the node.

    The CI's problem (the build ends as an error), not the change's.
    """


class CommandAborted(CommandStopped):
    """The caller's `should_stop` turned true mid-command; the executor has stopped it.

    Not a CommandTimeout: the build was superseded or aborted, so the command's
    node is fine and nothing is to be retried.
    """


# Polled by an executor while a command runs: True means stop it now (abort, supersede).
StopCheck = Callable[[], bool]


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Executor(Protocol):
    """What a job needs of a node, whatever the protocol (SSH or WinRM)."""

    node_name: str

    def put(self, data: bytes, remote_path: str) -> None:
        """Write `data` to `remote_path` on the node (chunked where the protocol needs it)."""

    def get(self, remote_path: str, local_path: Path) -> None:
        """Copy a file from the node to `local_path`."""

    def close(self) -> None:
        """Release the connection."""


class Outcome(enum.StrEnum):
    """How a job ended; the worker maps it onto the build's state."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the change's fault: a -1 if the job votes
    ERROR = "error"  # the CI's fault: retried, never a -1
    MERGE_CONFLICT = "merge_conflict"  # reported without a vote


class InfraError(TransientError):
    """Raised inside a job for a CI-side failure; becomes Outcome.ERROR.

    Transient as far as the build goes: the worker retries an errored build,
    up to `worker.max_attempts`, whatever the cause.
    """


@dataclass(frozen=True)
class TestOutcome:
    """One test's result, as its subunit stream reported it (and its re-runs decided)."""

    __test__ = False  # not a pytest test class, despite the name

    test_id: str
    status: str  # one of runners.subunit.STATUSES (FLAKY only after runners.rerun)
    duration: float | None = None  # seconds, when the stream carried both timestamps
    details: str = ""  # traceback of a failure, reason of a skip
    # Which run gave this status: 0 the first, N re-run N (runners.rerun).
    attempt: int = 0
    # The test's other attachments (logging, stdout...): a file in the build's
    # log tree, relative to it ("" when none or not stored: runners.subunit).
    attachments: str = ""


@dataclass
class JobResult:
    outcome: Outcome
    summary: str = ""
    tests: list[TestOutcome] = field(default_factory=list)
    # The commit the job tested (the merge, or a baseline's branch tip), when it got one.
    tested_commit: str | None = None


@dataclass
class BuildContext:
    """Everything one build's runner may use."""

    build_id: int
    job_name: str
    change: ChangeInfo
    config: Config
    # Where the job writes what it collects: private until the worker has
    # redacted it and moved it into the browsable log tree.
    log_dir: Path
    log_url: str
    steps: StepRecorder
    nodes: Sequence[NodeConfig] = ()
    should_abort: Callable[[], bool] = lambda: False
    # Returns once the build's checkpoint nodes are reverted and answering;
    # raises the provisioning's InfraError if they are not (a runner whose
    # `waits_for_nodes` is set calls it before it first uses a node).
    nodes_ready: Callable[[], None] = lambda: None


# What a runner's `prepare` made for the rest of the build (nodes, connections,
# rendered files): one value, handed to `run`, `collect` and `cleanup`.
Prepared = TypeVar("Prepared")


class Runner(abc.ABC, Generic[Prepared]):
    """One job type; a fresh instance per build.

    `prepare` either returns everything the build needs or raises (having
    released what it took); `collect` runs only after a `prepare` that
    returned, `cleanup` always (with None when `prepare` raised).
    """

    #: True: `run` calls `ctx.nodes_ready()` before it first uses a node, so the
    #: worker provisions the nodes while the runner prepares and merges; False:
    #: the worker provisions them before `prepare`.
    waits_for_nodes: ClassVar[bool] = False

    #: Node labels the job needs, one entry per node (e.g. devstack + 2 x hyperv).
    def node_labels(self) -> list[str]:
        return []

    @abc.abstractmethod
    def prepare(self, ctx: BuildContext) -> Prepared:
        """Get nodes and sources ready; raise InfraError if the CI cannot."""

    @abc.abstractmethod
    def run(self, ctx: BuildContext, prepared: Prepared) -> JobResult:
        """Run the job proper and say how it ended."""

    def collect(self, ctx: BuildContext, prepared: Prepared) -> None:
        """Gather logs into ctx.log_dir (always called once `prepare` returned)."""

    def cleanup(self, ctx: BuildContext, prepared: Prepared | None) -> list[str]:
        """Leave nodes clean (always called); return names of nodes that failed to clean."""
        return []
