"""Build steps: each one a row (state, timing, live output tail) and a log file.

Output is redacted line by line before it reaches the file or the database,
so a configured secret never shows on the dashboard or in published logs.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from ci.models import BuildStep, StepState, utcnow
from runners.base import CommandStopped, ExecutorError, InfraError
from runners.redaction import REDACTED, Redactor

logger = logging.getLogger(__name__)

__all__ = ["REDACTED", "StepHandle", "StepRecorder", "make_redactor", "safe_name"]

TAIL_CHARS = 8000
FLUSH_SECONDS = 1.0


def make_redactor(secrets: Iterable[str]) -> Redactor:
    """A callable masking every secret, in every form the job writes it
    (raw, percent-encoded, quoted, escaped: see runners/redaction.py)."""
    return Redactor(secrets)


def safe_name(text: str) -> str:
    """A file-name-safe form of a step or node name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "step"


class StepHandle:
    """The running step: write output, set the result. Thread-safe."""

    def __init__(self, recorder: StepRecorder, step_id: int, path: Path) -> None:
        self._recorder = recorder
        self.step_id = step_id
        self.path = path
        self._lock = threading.Lock()
        self._partial = ""
        self._tail = ""
        self._last_flush = 0.0
        self._dirty = False  # the tail holds text the database row does not
        self._timer: threading.Timer | None = None
        self._closed = False
        self._file = path.open("a", encoding="utf-8", errors="replace")
        self.state: StepState | None = None
        self.exit_code: int | None = None
        self.message = ""

    def write(self, text: str) -> None:
        """Append output; complete lines are redacted and written at once."""
        with self._lock:
            data = self._partial + text
            complete, sep, self._partial = data.rpartition("\n")
            if sep:
                self._emit(complete + "\n")
            if not self._dirty:
                return
            wait = FLUSH_SECONDS - (time.monotonic() - self._last_flush)
            if wait <= 0:
                self._flush_tail()
            elif self._timer is None and not self._closed:
                # Push the tail later even if no more output comes: a command
                # that prints a line and then goes quiet must not look stale.
                self._timer = threading.Timer(wait, self._flush_later)
                self._timer.daemon = True
                self._timer.start()

    def log(self, line: str) -> None:
        """Write one line of the CI's own narration into the step's log."""
        self.write(line.rstrip("\n") + "\n")

    def _emit(self, text: str) -> None:
        clean = self._recorder.redact(text)
        self._file.write(clean)
        self._file.flush()
        self._tail = (self._tail + clean)[-TAIL_CHARS:]
        self._dirty = True

    def _flush_tail(self) -> None:
        self._last_flush = time.monotonic()
        self._dirty = False
        self._recorder.update(self.step_id, output_tail=self._tail)

    def _flush_later(self) -> None:
        """The timer's flush: push whatever the tail gained since the last push."""
        with self._lock:
            self._timer = None
            if self._dirty and not self._closed:
                try:
                    self._flush_tail()
                except Exception:  # a live-tail hiccup must not kill the timer thread noisily
                    logger.exception("could not update the live tail of step %s", self.step_id)

    def record(self, **columns: object) -> None:
        """Write live columns of the step's row now (the tempest step's test counts);
        text is redacted as the output is."""
        self._recorder.update(self.step_id, **{
            name: self._recorder.redact(value) if isinstance(value, str) else value
            for name, value in columns.items()})

    def finish(self, state: StepState, message: str = "", exit_code: int | None = None) -> None:
        """Record how the step ended (the context manager calls this if you do not)."""
        self.state = state
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code

    def close(self) -> None:
        """Write the last partial line and record the final state; stops the flush timer."""
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            # Outside the lock: a timer already firing waits for it, then sees _closed.
            timer.cancel()
            timer.join()
        with self._lock:
            if self._partial:
                self._emit(self._partial + "\n")
                self._partial = ""
            self._file.close()
            self._recorder.update(
                self.step_id,
                output_tail=self._tail,
                state=self.state or StepState.SUCCEEDED,
                exit_code=self.exit_code,
                message=self._recorder.redact(self.message)[:4000],
                finished_at=utcnow(),
            )


class StepRecorder:
    """Creates a build's steps and keeps their rows current."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        build_id: int,
        log_dir: Path,
        redact: Callable[[str], str] = lambda t: t,
    ) -> None:
        self.sessions = sessions
        self.build_id = build_id
        self.log_dir = log_dir
        self.redact = redact
        self._count = 0
        self._lock = threading.Lock()
        log_dir.mkdir(parents=True, exist_ok=True)

    def update(self, step_id: int, **values: object) -> None:
        with self.sessions() as session, session.begin():
            step = session.get(BuildStep, step_id)
            if step is not None:
                for key, value in values.items():
                    setattr(step, key, value)

    def start(self, name: str, node: str | None = None) -> StepHandle:
        with self._lock:
            self._count += 1
            index = self._count
        file_name = f"{index:02d}-{safe_name(name)}"
        if node:
            file_name += f"-{safe_name(node)}"
        file_name += ".log"
        with self.sessions() as session, session.begin():
            row = BuildStep(build_id=self.build_id, name=name, node=node, log_name=file_name,
                            state=StepState.RUNNING)
            session.add(row)
            session.flush()
            step_id = row.id
        return StepHandle(self, step_id, self.log_dir / file_name)

    @contextmanager
    def step(self, name: str, node: str | None = None) -> Iterator[StepHandle]:
        """Run a block as a step: an exception marks it error (CI) or failed, and propagates."""
        handle = self.start(name, node)
        try:
            yield handle
        except (InfraError, ExecutorError, CommandStopped) as exc:
            handle.log(f"ERROR: {exc}")
            handle.finish(StepState.ERROR, str(exc))
            raise
        except Exception as exc:
            handle.log(f"FAILED: {exc}")
            handle.finish(StepState.FAILED, str(exc))
            raise
        finally:
            handle.close()

    def skip(self, name: str, node: str | None = None, message: str = "") -> None:
        """Record a step that did not run (e.g. after an earlier failure)."""
        handle = self.start(name, node)
        handle.finish(StepState.SKIPPED, message)
        handle.close()
