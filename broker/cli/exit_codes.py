"""The ``plugboard`` command's exit statuses, one per kind of outcome, so scripts can
tell "not found" from "no broker" from "refused" (listed in ``plugboard --help``)."""

from __future__ import annotations

from plugboard.protocol.errors import (
    ConnectionFailed,
    KeyRefused,
    NotFound,
    RemoteError,
    RequestTimeout,
)

OK = 0
ERROR = 1
"""Anything else: bad input, a broken contract or configuration, a failed check."""
USAGE = 2
"""The command line itself is wrong (argparse)."""
NO_BROKER = 3
"""No broker answered at the endpoint."""
NOT_FOUND = 4
"""The broker has no such property, plugin or method."""
REFUSED = 5
"""The broker refused: not allowed, a value it does not accept, a conflict."""
TIMED_OUT = 6
"""``watch -W`` ran out of time before ``-C`` changes arrived."""
INTERRUPTED = 130
"""Ctrl-C."""

EPILOG = (f"exit status: {OK} done, {ERROR} error, {USAGE} usage, {NO_BROKER} no broker, "
          f"{NOT_FOUND} not found, {REFUSED} refused by the broker, {TIMED_OUT} watch timed "
          f"out, {INTERRUPTED} interrupted")


def for_error(exc: Exception) -> int:
    if isinstance(exc, KeyRefused):
        return REFUSED
    if isinstance(exc, ConnectionFailed | RequestTimeout):
        return NO_BROKER
    if isinstance(exc, NotFound):
        return NOT_FOUND
    if isinstance(exc, RemoteError):
        return REFUSED
    return ERROR
