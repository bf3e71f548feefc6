"""The devstack-hyperv job's tempest step: tempest.sh, its subunit streams, the re-runs.

The verdict comes from the parsed streams, never an exit code. Failed tests
run again (`tempest.rerun_failed` times at most, serially, only those); one
that then passes is flaky, not failed (runners.rerun). A run that executed no
test, or left no stream (tempest.sh found no tempest), is the CI's error.
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
from runners.subunit import TestOutcome, parse_subunit, summarize

# Runs the uploaded tempest.sh with these arguments, output into the step.
RunScript = Callable[[Sequence[str]], CommandResult]


@dataclass
class TempestStep:
    """One build's tempest step on the controller."""

    config: TempestConfig
    ssh: SSHExecutor
    run_script: RunScript
    remote_subunit: str  # the stream tempest.sh leaves (workspace/tempest/tempest.subunit)
    log_dir: Path  # the build's log tree: each stream is kept there

    def run(self, step: StepHandle) -> JobResult:
        run = self.run_script([])
        results = self._stream(self.remote_subunit, "tempest.subunit", run)
        if summarize(results).executed == 0:
            # Nothing ran: no verdict on the change, and nothing worth re-running.
            step.log(summarize(results).line())
            step.finish(StepState.ERROR, "no tests ran", run.exit_code)
            return JobResult(Outcome.ERROR, f"tempest ran no tests (exit {run.exit_code})",
                             results)
        results = self._rerun_failed(step, results)
        summary = summarize(results)
        step.log(summary.line())
        if summary.failed:
            step.log(format_failures(results))
        if summary.flaky:
            step.log(format_flaky(results))
        flaky = f"; flaky (passed when re-run): {names(summary.flaky)}" if summary.flaky else ""
        if summary.failed:
            step.finish(StepState.FAILED, summary.line(), run.exit_code)
            return JobResult(Outcome.FAILED,
                             f"{summary.line()}; failed: {names(summary.failed)}{flaky}", results)
        step.finish(StepState.SUCCEEDED, summary.line(), run.exit_code)
        return JobResult(Outcome.SUCCEEDED, summary.line() + flaky, results)

    def _stream(self, remote: str, name: str, run: CommandResult) -> list[TestOutcome]:
        """Download one subunit stream into the log tree and parse it; none is a CI error."""
        local = self.log_dir / name
        try:
            self.ssh.get(remote, local)
        except (ExecutorError, OSError) as exc:
            local.unlink(missing_ok=True)
            # tempest.sh's last words say why (e.g. tempest is not installed).
            raise InfraError(f"no subunit stream from tempest (exit {run.exit_code})"
                             f"{last_line(run.stderr)}: {exc}") from exc
        return parse_subunit(local.read_bytes())

    def _rerun_failed(self, step: StepHandle, results: list[TestOutcome]) -> list[TestOutcome]:
        """Run the failed tests again, one re-run after the other, while some still fail."""
        remote_dir = PurePosixPath(self.remote_subunit).parent
        attempts = self.config.rerun_failed
        for attempt in range(1, attempts + 1):
            ids = rerun_ids(results)
            if not ids:
                break
            step.log(f"re-running {len(ids)} failed tests (re-run {attempt} of {attempts})")
            self.ssh.put(load_list(ids), str(remote_dir / f"rerun-{attempt}.txt"))
            run = self.run_script(["rerun", str(attempt)])
            again = self._stream(str(remote_dir / f"rerun-{attempt}.subunit"),
                                 f"tempest-rerun-{attempt}.subunit", run)
            results = merge_rerun(results, again, attempt)
        return results


def names(test_ids: Sequence[str], limit: int = 5) -> str:
    """`A.test_x, B.test_y and 3 more`: short names for a summary line."""
    shown = ", ".join(short_name(t) for t in test_ids[:limit])
    if len(test_ids) > limit:
        shown += f" and {len(test_ids) - limit} more"
    return shown


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return f": {lines[-1][:300]}" if lines else ""
