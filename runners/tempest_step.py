"""The devstack-hyperv job's tempest step: tempest.sh, its subunit streams, the re-runs.

The verdict comes from the parsed streams, never an exit code. Failed tests
run again (`tempest.rerun_failed` times at most, serially, only those); one
that then passes is flaky, not failed (runners.rerun). A run that executed no
test, or left no stream (tempest.sh found no tempest), is the CI's error.

While tempest runs, its streams are followed as they grow and the step's row
shows tests done / passed / failed and the test running (runners.tempest_progress).
The step's exit code is the verdict's, 0 passed and 1 failed, as `tempest run`
itself exits without `--subunit`: with it, stestr's load returns 0 whatever
the tests did (stestr/commands/load.py, "load() returns 0 always on subunit
output"), so tempest.sh's own 0 said nothing and read as a contradiction
beside a failed state; tempest.sh's code is in the step's log.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ci.config import TempestConfig
from ci.models import StepState
from runners.base import CommandResult, ExecutorError, InfraError, JobResult, Outcome
from runners.rerun import load_list, merge_rerun, rerun_ids
from runners.results import format_failures, format_flaky, short_name
from runners.ssh import SSHExecutor
from runners.steps import StepHandle
from runners.subunit import AttachmentStore, TestOutcome, parse_subunit, summarize
from runners.tempest_progress import POLL_SECONDS, Progress, ProgressWatcher, TestCounter

# Runs the uploaded tempest.sh with these arguments, output into the step.
RunScript = Callable[[Sequence[str]], CommandResult]
# The files tempest.sh writes its passes' streams into, next to the joined one.
PASS_STREAMS = ("parallel.subunit", "serial.subunit")
VERDICT_PASSED = 0
VERDICT_FAILED = 1


@dataclass
class TempestStep:
    """One build's tempest step on the controller."""

    config: TempestConfig
    ssh: SSHExecutor
    run_script: RunScript
    remote_subunit: str  # the stream tempest.sh leaves (workspace/tempest/tempest.subunit)
    log_dir: Path  # the build's log tree: each stream is kept there
    progress_seconds: float = POLL_SECONDS  # how often the live counts are read and written

    def run(self, step: StepHandle) -> JobResult:
        counter = TestCounter()
        remote_dir = PurePosixPath(self.remote_subunit).parent
        streams = [str(remote_dir / name) for name in PASS_STREAMS]
        # An earlier build's streams would be counted as this one's until tempest.sh
        # starts afresh (it empties the directory, but the watcher may look first).
        # Over the SFTP session already open: a command would be a channel and a shell.
        self.ssh.remove(streams)
        with self._watch(step, counter, streams):
            run = self.run_script([])
        step.log(f"tempest.sh exited {run.exit_code}")
        results = self._stream(self.remote_subunit, "tempest.subunit", run)
        if summarize(results).executed == 0:
            # Nothing ran: no verdict on the change, and nothing worth re-running.
            step.log(summarize(results).line())
            step.record(**final_progress(results).columns())
            step.finish(StepState.ERROR, "no tests ran", run.exit_code or VERDICT_FAILED)
            return JobResult(Outcome.ERROR, f"tempest ran no tests (exit {run.exit_code})",
                             results)
        results = self._rerun_failed(step, results, counter)
        summary = summarize(results)
        # The full streams decide: the live counts end on what they say.
        step.record(**final_progress(results).columns())
        step.log(summary.line())
        if summary.failed:
            step.log(format_failures(results))
        if summary.flaky:
            step.log(format_flaky(results))
        flaky = f"; flaky (passed when re-run): {names(summary.flaky)}" if summary.flaky else ""
        if summary.failed:
            step.finish(StepState.FAILED, summary.line(), VERDICT_FAILED)
            return JobResult(Outcome.FAILED,
                             f"{summary.line()}; failed: {names(summary.failed)}{flaky}", results)
        step.finish(StepState.SUCCEEDED, summary.line(), VERDICT_PASSED)
        return JobResult(Outcome.SUCCEEDED, summary.line() + flaky, results)

    def _watch(self, step: StepHandle, counter: TestCounter,
               paths: Sequence[str]) -> ProgressWatcher:
        def publish(progress: Progress) -> None:
            step.record(**progress.columns())

        return ProgressWatcher(self.ssh, paths, counter, publish, self.progress_seconds)

    def _stream(self, remote: str, name: str, run: CommandResult,
                attachments: str = "attachments") -> list[TestOutcome]:
        """Download one subunit stream into the log tree and parse it; none is a CI error.

        The tests' attachments (captured logging...) go to files under
        `attachments` in the log tree, not into the results (runners/subunit.py).
        """
        local = self.log_dir / name
        try:
            self.ssh.get(remote, local)
        except (ExecutorError, OSError) as exc:
            local.unlink(missing_ok=True)
            # tempest.sh's last words say why (e.g. tempest is not installed).
            raise InfraError(f"no subunit stream from tempest (exit {run.exit_code})"
                             f"{last_line(run.stderr)}: {exc}") from exc
        return parse_subunit(local.read_bytes(), AttachmentStore(self.log_dir, attachments))

    def _rerun_failed(self, step: StepHandle, results: list[TestOutcome],
                      counter: TestCounter) -> list[TestOutcome]:
        """Run the failed tests again, one re-run after the other, while some still fail."""
        remote_dir = PurePosixPath(self.remote_subunit).parent
        attempts = self.config.rerun_failed
        counter.rerun = True  # a failed test passing now moves from failed to passed
        for attempt in range(1, attempts + 1):
            ids = rerun_ids(results)
            if not ids:
                break
            step.log(f"re-running {len(ids)} failed tests (re-run {attempt} of {attempts})")
            self.ssh.put(load_list(ids), str(remote_dir / f"rerun-{attempt}.txt"))
            with self._watch(step, counter, [str(remote_dir / f"rerun-{attempt}.subunit")]):
                run = self.run_script(["rerun", str(attempt)])
            again = self._stream(str(remote_dir / f"rerun-{attempt}.subunit"),
                                 f"tempest-rerun-{attempt}.subunit", run,
                                 f"attachments/rerun-{attempt}")
            results = merge_rerun(results, again, attempt)
        return results


def final_progress(results: Sequence[TestOutcome]) -> Progress:
    """The progress the full streams give: every test done, flaky ones passed."""
    summary = summarize(results)
    failed = len(summary.failed)
    return Progress(done=summary.total, failed=failed,
                    passed=summary.total - failed - summary.counts.get("skip", 0))


def names(test_ids: Sequence[str], limit: int = 5) -> str:
    """`A.test_x, B.test_y and 3 more`: short names for a summary line."""
    shown = ", ".join(short_name(t) for t in test_ids[:limit])
    if len(test_ids) > limit:
        shown += f" and {len(test_ids) - limit} more"
    return shown


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return f": {lines[-1][:300]}" if lines else ""
