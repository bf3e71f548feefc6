"""Logging for the simulators' paramiko server transports.

A client that hangs up without reading the server's last packets (every
`hyperv-ci-sim` call does) makes paramiko log "Connection reset by peer" at
ERROR. For a server that is routine, so the simulators log their transports
under their own channel, at WARNING and above, without that one line.
"""

from __future__ import annotations

import logging

import paramiko

_HANGUPS = ("Connection reset by peer", "Broken pipe")


class _ClientHangupFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Socket exception") and
                    any(text in message for text in _HANGUPS))


_FILTER = _ClientHangupFilter()


def quiet_client_hangups(transport: paramiko.Transport, channel: str) -> None:
    """Log `transport` under `channel`, without the client-hung-up socket errors."""
    transport.set_log_channel(channel)
    logger = logging.getLogger(channel)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
        # As for paramiko's own channel (ci/app/cli.py quiets it): each connection's INFO is noise.
        logger.setLevel(logging.WARNING)
