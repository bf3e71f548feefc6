"""The root of the CI's own exceptions, and what each branch asks of its catcher.

    HypervCIError
    ├── TransientError   asking again later may work: retry, with a bound
    ├── PermanentError   asking again never helps: give up now, say why
    └── ControlFlow      not a failure: work stopped on purpose (an abort, a
                         timeout) or ended with a result (a merge conflict)

Catch a branch, not a list of classes: `except TransientError` is every
"node or Gerrit unreachable"; `except PermanentError` every "bad config, no
such patch set, a vote Gerrit refuses". A control-flow exception is never a
transport error, so a timed-out or aborted command is never mistaken for a
node that went away (and never retried as one). Errors of libraries
(SQLAlchemy's OperationalError, OSError) stay theirs; the places that decide
"retry or give up" name them next to these (listener/scheduler.is_transient).
docs/errors.md lists every exception, what it means and who catches it.
"""

from __future__ import annotations


class HypervCIError(Exception):
    """Any exception the CI raises on purpose (never a bug's own exception)."""


class TransientError(HypervCIError):
    """Asking again later may succeed: a node or Gerrit unreachable, a lost link."""


class PermanentError(HypervCIError):
    """Asking again will fail the same way: bad config, an answer that will not change."""


class ControlFlow(HypervCIError):
    """Not an error of a transport or an answer: the work was stopped or ended early."""
