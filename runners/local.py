"""The `local` job: one configured command on the worker host, with a timeout.

The change under test reaches the command only as environment variables
(data, never part of the command line).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path

from ci.config import LocalJob
from ci.models import StepState
from runners.base import BuildContext, JobResult, Outcome, Runner
from runners.subunit import AttachmentStore, TestOutcome, parse_subunit, summarize

logger = logging.getLogger(__name__)

SUBUNIT_FILE = "testrepository.subunit"


def change_environment(ctx: BuildContext) -> dict[str, str]:
    """The variables a local job sees about its change."""
    change = ctx.change
    return {
        "HYPERV_CI_BUILD_ID": str(ctx.build_id),
        "HYPERV_CI_PROJECT": change.project,
        "HYPERV_CI_BRANCH": change.branch,
        "HYPERV_CI_CHANGE": str(change.number),
        "HYPERV_CI_PATCHSET": str(change.patchset),
        "HYPERV_CI_REF": change.ref,
        "HYPERV_CI_SUBJECT": change.subject,
        "HYPERV_CI_OWNER": change.owner,
        "HYPERV_CI_LOG_DIR": str(ctx.log_dir),
    }


class LocalRunner(Runner[None]):
    """Runs `job.command` in a new process group; the timeout kills the whole group."""

    def __init__(self, job: LocalJob) -> None:
        self.job = job

    def prepare(self, ctx: BuildContext) -> None:
        """Nothing to get ready: the command runs on the worker host, in the log dir."""

    def run(self, ctx: BuildContext, prepared: None) -> JobResult:
        env = {**os.environ, **self.job.env, **change_environment(ctx),
               "PYTHONIOENCODING": "utf-8"}
        with ctx.steps.step("run", node="localhost") as step:
            step.log(f"$ {' '.join(self.job.command)}")
            proc = subprocess.Popen(
                self.job.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                env=env, cwd=ctx.log_dir, start_new_session=True,
            )
            timed_out = threading.Event()

            def _kill() -> None:
                timed_out.set()
                os.killpg(proc.pid, signal.SIGKILL)

            timer = threading.Timer(self.job.timeout, _kill)
            aborter = threading.Thread(target=self._watch_abort, args=(ctx, proc), daemon=True)
            timer.start()
            aborter.start()
            try:
                assert proc.stdout is not None
                for raw in iter(proc.stdout.readline, b""):
                    step.write(raw.decode("utf-8", errors="replace"))
                code = proc.wait()
            finally:
                timer.cancel()
            if timed_out.is_set():
                step.finish(StepState.FAILED, f"timed out after {self.job.timeout}s", code)
                return JobResult(Outcome.FAILED, f"TIMED_OUT after {self.job.timeout}s")
            if code != 0:
                step.finish(StepState.FAILED, f"exit code {code}", code)
            else:
                step.finish(StepState.SUCCEEDED, "", code)
        outcomes = _outcomes(ctx.log_dir)
        if code != 0:
            return JobResult(Outcome.FAILED, f"command exited with {code}", outcomes)
        if outcomes and not summarize(outcomes).passed:
            return JobResult(Outcome.FAILED, "tests failed", outcomes)
        return JobResult(Outcome.SUCCEEDED, "command succeeded", outcomes)

    @staticmethod
    def _watch_abort(ctx: BuildContext, proc: subprocess.Popen[bytes]) -> None:
        while proc.poll() is None:
            if ctx.should_abort():
                os.killpg(proc.pid, signal.SIGKILL)
                return
            threading.Event().wait(0.5)



def _outcomes(log_dir: Path) -> list[TestOutcome]:
    """Results of a subunit stream the command left in its log dir, if any."""
    path = log_dir / SUBUNIT_FILE
    if not path.is_file():
        return []
    # Attachments go beside the stream, into the tree the worker publishes.
    return parse_subunit(path.read_bytes(), AttachmentStore(log_dir))
