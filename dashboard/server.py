"""Serving the dashboard with waitress on a background thread (`hyperv-ci
dashboard`, the demo and the tests: ci/app/processes.py wires them)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from flask import Flask
from waitress import wasyncore
from waitress.server import BaseWSGIServer, create_server

logger = logging.getLogger(__name__)

THREADS = 8


class RunningServer:
    """A waitress server running on its own thread; `close()` stops it and waits."""

    def __init__(self, server: BaseWSGIServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def port(self) -> int:
        return int(self.server.effective_port)

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, close every connection, stop the worker threads."""
        # Sockets must be closed by the loop's own thread (closing them under
        # its select() fails with EBADF): the trigger runs the thunk there.
        # An empty socket map ends waitress's loop.
        self.server.trigger.pull_trigger(lambda: wasyncore.close_all(self.server._map))
        self.thread.join(timeout)
        self.server.task_dispatcher.shutdown(timeout=timeout)


def _make_server(app: Flask, host: str, port: int) -> BaseWSGIServer:
    # waitress casts asyncore_loop_timeout to int (adjustments.py): 0.2 became 0
    # and its select() loop spun a core while idle. Its default, 1 s, only bounds
    # how long the loop sleeps; `close()` wakes it at once through the trigger.
    server: Any = create_server(app, host=host, port=port, threads=THREADS,
                                ident="hyperv-ci", clear_untrusted_proxy_headers=True,
                                asyncore_loop_timeout=1)
    return server


def start_in_thread(app: Flask, host: str = "127.0.0.1",
                    port: int = 0) -> tuple[RunningServer, threading.Thread, int]:
    """Serve `app` on a daemon thread; port 0 picks a free port. Returns (server, thread, port)."""
    server = _make_server(app, host, port)
    thread = threading.Thread(target=server.run, name="dashboard-server", daemon=True)
    thread.start()
    running = RunningServer(server, thread)
    logger.info("dashboard serving on http://%s:%s/", host, running.port)
    return running, thread, running.port
